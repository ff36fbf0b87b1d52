"""A 1 GB numpy array travels out-of-band without extra copies: memory stays near one copy
per side (client, controller, engine), sealed end to end (the default) or not."""

import os

import numpy as np
import pytest

from conftest import current_rss, peak_rss

GB = 1 << 30


def reset_peak(pid=None):
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    with open(f"/proc/{pid or os.getpid()}/clear_refs", "w") as f:
        f.write("5")


@pytest.mark.skipif(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") < 12 * GB,
                    reason="needs about 6 GB of free memory")
@pytest.mark.parametrize("e2e", [False, True], ids=["plain", "sealed"])
def test_one_gigabyte_array_costs_about_one_copy_per_side(own_cluster, e2e):
    cluster = own_cluster(1)
    rc = cluster.client(e2e=e2e)
    assert rc.e2e is e2e
    engine_pid = cluster.engine_pids[0]
    view = rc[0]
    view.block = True

    x = np.arange(GB // 8, dtype=np.float64)  # 1 GiB, touched
    client_base = current_rss()
    engine_base = current_rss(engine_pid)
    controller_base = current_rss(cluster.controller_pid)
    for pid in (None, engine_pid, cluster.controller_pid):
        reset_peak(pid)

    view.push({"x": x})
    view.execute("last = float(x[-1])")
    assert view.pull("last") == float(GB // 8 - 1)
    # The client sent from the array itself (sealed: encrypted a chunk at a time as it went);
    # the engine holds one received copy, used in place (sealed: decrypted where it lies).
    assert peak_rss() - client_base < 0.25 * GB
    assert peak_rss(engine_pid) - engine_base < 1.25 * GB
    assert peak_rss(cluster.controller_pid) - controller_base < 1.25 * GB

    reset_peak()
    reset_peak(engine_pid)
    engine_base = current_rss(engine_pid)
    client_base = current_rss()
    y = view.pull("x")
    assert y.dtype == np.float64 and y.shape == x.shape
    assert y[0] == 0.0 and y[-1] == float(GB // 8 - 1)
    assert y.flags.writeable
    # The engine sent from its array without copying it (sealed: into one ciphertext copy,
    # which the engine does not yet encrypt as it sends); the client's only new memory is y
    # (sealed: decrypted where it arrived).
    assert peak_rss(engine_pid) - engine_base < (1.25 if e2e else 0.25) * GB
    assert peak_rss() - client_base < 1.25 * GB
    rc.close()


def test_mid_sized_results_release_their_engine_buffers(own_cluster):
    """Results of 64-256 KiB leave the engine without a copy and, when its connection is idle,
    from its Python thread (not its network thread): either way the engine must release the
    Python buffers it lent once they are sent."""
    cluster = own_cluster(1)
    rc = cluster.client()
    engine_pid = cluster.engine_pids[0]
    view = rc[0]
    view.block = True

    def make(i):
        import numpy as np
        return np.full(25_000, i, dtype=np.float64)  # 200 kB: an out-of-band buffer

    for i in range(50):
        view.apply_sync(make, i)
    base = current_rss(engine_pid)
    for i in range(1000):
        r = view.apply_sync(make, i)
        assert r.shape == (25_000,) and r[0] == i and r[-1] == i
    # 1000 results never released would keep 200 MB alive.
    assert current_rss(engine_pid) - base < 50 * 1024 * 1024
    rc.close()
