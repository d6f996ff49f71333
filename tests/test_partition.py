"""Row partitioning: contiguous, balanced, complete, first n mod m blocks one row longer."""

import pytest

from mpigd.data import block_range, shard_rows


@pytest.mark.parametrize("n,parts", [(n, p) for n in (1, 2, 7, 10, 1003, 4096)
                                     for p in (1, 2, 3, 4, 7, 16) if p <= n])
def test_blocks_tile_the_rows_in_order(n, parts):
    ranges = [block_range(n, parts, i) for i in range(parts)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [hi - lo for lo, hi in ranges]
    q, r = divmod(n, parts)
    assert sizes == [q + 1] * r + [q] * (parts - r)


def test_dedicated_server_holds_no_rows_and_workers_share_all():
    n, size = 1003, 4
    assert shard_rows(n, size, 0, dedicated_server=True) == (0, 0)
    ranges = [shard_rows(n, size, r, dedicated_server=True) for r in range(1, size)]
    assert ranges == [(0, 335), (335, 669), (669, 1003)]
    assert [shard_rows(n, size, r, False) for r in range(size)] == [
        (0, 251), (251, 502), (502, 753), (753, 1003)]
