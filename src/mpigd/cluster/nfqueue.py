"""nfnetlink_queue spoken over a raw netlink socket, with nothing but the standard library.

Just what a delayer needs: bind queues (metadata only, GSO packets whole), read the ids
of queued packets, and release them with batch verdicts. Constants and structs are those
of <linux/netfilter/nfnetlink_queue.h>; netlink headers are host-endian, nfnetlink's
payload fields are big-endian.
"""

import errno
import socket
import struct

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
SO_RCVBUFFORCE = 33

NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG, NFQNL_MSG_VERDICT_BATCH = 0, 1, 2, 3
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4

NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_CFG_F_GSO = 1 << 2
NF_DROP, NF_ACCEPT = 0, 1

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NFGENMSG = struct.Struct("=BBH")  # family, version, res_id (the queue, big-endian)
_NLATTR = struct.Struct("=HH")  # len, type
_PACKET_TYPE = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET


def _align(n):
    return (n + 3) & ~3


def _attr(kind, payload):
    body = _NLATTR.pack(_NLATTR.size + len(payload), kind) + payload
    return body + b"\0" * (_align(len(body)) - len(body))


class QueueSocket:
    """One netlink socket bound to one or more NFQUEUE queue numbers of this network namespace."""

    def __init__(self, rcvbuf=8 << 20):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        try:  # root may exceed net.core.rmem_max: bursts of packets must not overflow it
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
        self._seq = 0
        self._early = []  # packets read while waiting for an acknowledgement
        self._buffer = bytearray(1 << 16)

    def fileno(self):
        return self.sock.fileno()

    def close(self):
        self.sock.close()

    def _message(self, msg_type, queue, attributes, flags=NLM_F_REQUEST):
        self._seq += 1
        payload = _NFGENMSG.pack(socket.AF_UNSPEC, 0, socket.htons(queue)) + b"".join(attributes)
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(payload),
                                (NFNL_SUBSYS_QUEUE << 8) | msg_type, flags, self._seq, 0)
        return header + payload

    def _configure(self, queue, *attributes):
        """Send one config request and wait for its acknowledgement (errors raise OSError)."""
        self.sock.send(self._message(NFQNL_MSG_CONFIG, queue, attributes, NLM_F_REQUEST | NLM_F_ACK))
        seq = self._seq
        while True:
            size = self.sock.recv_into(self._buffer)
            for kind, offset, length in _messages(self._buffer, size):
                if kind == NLMSG_ERROR:
                    code, = struct.unpack_from("=i", self._buffer, offset + _NLMSGHDR.size)
                    got_seq = _NLMSGHDR.unpack_from(self._buffer, offset)[3]
                    if got_seq == seq:
                        if code:
                            raise OSError(-code, f"NFQUEUE {queue}: {errno.errorcode.get(-code, code)}")
                        return
                elif kind == _PACKET_TYPE:
                    self._early.append(_packet(self._buffer, offset, length))

    def bind(self, queue, maxlen=20000):
        """Receive queue `queue`'s packets: ids and metadata only, GSO super-packets unsplit."""
        self._configure(queue, _attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, 0)))
        self._configure(queue, _attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META)))
        self._configure(queue, _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", maxlen)))
        try:  # without it the kernel segments GSO packets before queueing them (costly)
            self._configure(queue, _attr(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_GSO)),
                            _attr(NFQA_CFG_FLAGS, struct.pack("!I", NFQA_CFG_F_GSO)))
        except OSError:
            pass

    def read_packets(self):
        """(queue, packet id) of every packet waiting on the socket now; never blocks."""
        found, self._early = self._early, []
        while True:
            try:
                size = self.sock.recv_into(self._buffer, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return found
            for kind, offset, length in _messages(self._buffer, size):
                if kind == _PACKET_TYPE:
                    found.append(_packet(self._buffer, offset, length))

    def release(self, queue, last_id, verdict=NF_ACCEPT):
        """Give `verdict` to every packet of `queue` with an id up to last_id (one message)."""
        attribute = _attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, last_id))
        self.sock.send(self._message(NFQNL_MSG_VERDICT_BATCH, queue, [attribute]))


def _messages(buffer, size):
    """(type, offset, length) of each netlink message in buffer[:size]."""
    offset = 0
    while offset + _NLMSGHDR.size <= size:
        length, kind = _NLMSGHDR.unpack_from(buffer, offset)[:2]
        if length < _NLMSGHDR.size:
            return
        yield kind, offset, length
        offset += _align(length)


def _packet(buffer, offset, length):
    """(queue, packet id) of one NFQNL_MSG_PACKET message."""
    queue, = struct.unpack_from("!H", buffer, offset + _NLMSGHDR.size + 2)
    position, end = offset + _NLMSGHDR.size + _NFGENMSG.size, offset + length
    while position + _NLATTR.size <= end:
        size, kind = _NLATTR.unpack_from(buffer, position)
        if (kind & 0x7FFF) == NFQA_PACKET_HDR:
            packet_id, = struct.unpack_from("!I", buffer, position + _NLATTR.size)
            return queue, packet_id
        if size < _NLATTR.size:
            break
        position += _align(size)
    raise OSError(errno.EPROTO, "NFQUEUE packet message without a packet header")
