"""Small network probes run inside a host (nsenter): ICMP ping, and a bulk TCP transfer.

    python -m mpigd.cluster.probes ping ADDR [--count K] [--interval S]
    python -m mpigd.cluster.probes serve --port P --bytes N     (prints `listening`, then JSON)
    python -m mpigd.cluster.probes send ADDR --port P --bytes N

Each prints one JSON line. ping needs root (a raw ICMP socket), like the cluster itself.
"""

import argparse
import json
import os
import socket
import statistics
import struct
import sys
import time

_ICMP_ECHO_REQUEST, _ICMP_ECHO_REPLY = 8, 0


def _checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _echo_request(ident, seq):
    payload = b"mpigd-cluster-probe".ljust(56, b".")
    header = struct.pack("!BBHHH", _ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    return struct.pack("!BBHHH", _ICMP_ECHO_REQUEST, 0, _checksum(header + payload), ident, seq) + payload


def _await_reply(sock, ident, seq, deadline):
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            packet = sock.recv(2048)
        except socket.timeout:
            return False
        start = (packet[0] & 0x0F) * 4  # a raw IPv4 socket hands us the IP header too
        kind, _, _, got_ident, got_seq = struct.unpack_from("!BBHHH", packet, start)
        if kind == _ICMP_ECHO_REPLY and (got_ident, got_seq) == (ident, seq):
            return True


def ping(address, count=5, interval=0.05, timeout=1.0):
    """RTTs in ms of `count` ICMP echoes to `address` (None for each one lost)."""
    ident = os.getpid() & 0xFFFF
    rtts = []
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        for seq in range(1, count + 1):
            started = time.perf_counter()
            sock.sendto(_echo_request(ident, seq), (address, 0))
            answered = _await_reply(sock, ident, seq, started + timeout)
            rtts.append(1e3 * (time.perf_counter() - started) if answered else None)
            time.sleep(interval)
    return rtts


def serve(port, size, timeout=60.0):
    """Receive `size` bytes on one connection; goodput over the whole and after the first quarter.

    The first quarter holds TCP's slow start (and, with a delay, its first round trips);
    the rest is the steady rate the link allows.
    """
    with socket.create_server(("0.0.0.0", port)) as server:
        server.settimeout(timeout)
        print("listening", flush=True)
        conn, _ = server.accept()
    with conn:
        conn.settimeout(timeout)
        got, first, quarter = 0, None, None
        while got < size:
            chunk = conn.recv(1 << 20)
            if not chunk:
                break
            now = time.perf_counter()
            first = first if first is not None else now
            got += len(chunk)
            if quarter is None and got >= size // 4:
                quarter = (now, got)
        end = time.perf_counter()
        conn.sendall(b"k")
    steady = 8 * (got - quarter[1]) / (end - quarter[0]) if quarter and end > quarter[0] else None
    return {"bytes": got, "seconds": end - first if first else None,
            "goodput_bps": 8 * got / (end - first) if first and end > first else None,
            "steady_goodput_bps": steady}


def send(address, port, size, timeout=60.0):
    block = b"\0" * (1 << 20)
    with socket.create_connection((address, port), timeout=timeout) as conn:
        sent = 0
        while sent < size:
            part = min(len(block), size - sent)
            conn.sendall(block[:part])
            sent += part
        conn.recv(1)
    return {"bytes": sent}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mpigd.cluster.probes")
    sub = parser.add_subparsers(dest="probe", required=True)
    p = sub.add_parser("ping")
    p.add_argument("address")
    p.add_argument("--count", type=int, default=5)
    p.add_argument("--interval", type=float, default=0.05)
    for name in ("serve", "send"):
        p = sub.add_parser(name)
        if name == "send":
            p.add_argument("address")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--bytes", type=int, required=True)
    args = parser.parse_args(argv)
    if args.probe == "ping":
        rtts = ping(args.address, args.count, args.interval)
        answered = [r for r in rtts if r is not None]
        result = {"rtt_ms": rtts, "lost": rtts.count(None),
                  "min_ms": min(answered) if answered else None,
                  "median_ms": statistics.median(answered) if answered else None}
    elif args.probe == "serve":
        result = serve(args.port, args.bytes)
    else:
        result = send(args.address, args.port, args.bytes)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
