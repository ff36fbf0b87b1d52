"""testudo.Client against a real, secure local cluster: connecting, engines, views by
indexing, closing, shutting down, and what the user sees when the connection or an engine
goes away. The shape follows ipyparallel's test_client.py; the tests are our own."""

import concurrent.futures
import os
import shutil
import signal
import threading
import time

import pytest

import testudo
from conftest import kill_processes, pid_gone, wait_until


# ----- connecting -----


def test_ids_and_len(rc, cluster):
    assert rc.ids == [0, 1, 2, 3]
    assert len(rc) == 4
    assert isinstance(rc.ids[0], int)


def test_connect_by_url_file_and_timeout(cluster):
    with testudo.Client(url_file=cluster.client_file, timeout=5) as client:
        client.wait_for_engines(4, timeout=10)
        assert client.ids == [0, 1, 2, 3]
        assert client[0].apply_sync(lambda: 6 * 7) == 42


def test_wait_for_engines_returns_when_enough(rc):
    t0 = time.monotonic()
    assert rc.wait_for_engines(4, timeout=5) is None
    assert rc.wait_for_engines(timeout=5) is None  # default: any one engine
    assert time.monotonic() - t0 < 1


def test_wait_for_engines_times_out(rc):
    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        rc.wait_for_engines(5, timeout=0.3)
    assert 0.25 < time.monotonic() - t0 < 3
    assert "5 engine(s) not ready in 0.3 seconds; 4 registered" in str(info.value)


def test_wait_for_engines_without_blocking_returns_a_future(rc):
    # As ipyparallel: a Future, done at once when the engines are there...
    ready = rc.wait_for_engines(4, block=False)
    assert isinstance(ready, concurrent.futures.Future)
    assert ready.done() and ready.result() is None
    # ...else done later, with the TimeoutError when they do not come.
    t0 = time.monotonic()
    missing = rc.wait_for_engines(5, timeout=0.3, block=False)
    assert time.monotonic() - t0 < 0.2 and not missing.done()
    with pytest.raises(TimeoutError, match="5 engine"):
        missing.result(timeout=10)


def test_missing_profile_raises_helpful_file_not_found(cluster):
    with pytest.raises(FileNotFoundError) as info:
        testudo.Client(profile="no_such_profile")
    message = str(info.value)
    assert os.path.join(cluster.home, "profile_no_such_profile", "security", "controller-client.json") in message
    assert "is a cluster running?" in message
    assert "testudo --profile no_such_profile cluster start" in message


def test_ipyparallel_arguments_testudo_cannot_honour_are_errors_not_ignored(cluster):
    # Ways of reaching a gateway testudo does not offer are refused, never ignored.
    with pytest.raises(NotImplementedError) as info:
        testudo.Client(url_file=cluster.client_file, sshserver="user@gateway", password="secret")
    assert "password" in str(info.value) and "secret" not in str(info.value)
    with pytest.raises(NotImplementedError):
        testudo.Client(url_file=cluster.client_file, paramiko=True)
    # A gateway that cannot be reached is a ConnectionError naming it (nothing listens on port 1).
    with pytest.raises(ConnectionError) as info:
        testudo.Client(url_file=cluster.client_file, sshserver="nobody@127.0.0.1:1", timeout=5)
    assert "SSH tunnel through nobody@127.0.0.1:1 failed" in str(info.value)
    with pytest.raises(TypeError) as info:
        testudo.Client(url_file=cluster.client_file, profile_dir="/elsewhere")
    assert "profile_dir" in str(info.value)
    with pytest.raises(TypeError) as info:
        testudo.Client(url_file=cluster.client_file, no_such_option=1)
    assert "no_such_option" in str(info.value)
    # The same names at their ipyparallel defaults are accepted, as ipyparallel code passes them.
    with testudo.Client(url_file=cluster.client_file, sshserver=None, sshkey=None, password=None,
                        paramiko=None, debug=False, context=None, cluster_id=None) as client:
        assert client.ids == [0, 1, 2, 3]


def test_connection_file_readable_by_others_is_refused(cluster, tmp_path):
    good = tmp_path / "good.json"
    shutil.copy(cluster.client_file, good)
    os.chmod(good, 0o600)
    with testudo.Client(url_file=str(good)) as client:  # positive control: same file, safe mode
        assert client.ids == [0, 1, 2, 3]

    bad = tmp_path / "bad.json"
    shutil.copy(cluster.client_file, bad)
    os.chmod(bad, 0o644)
    with pytest.raises(PermissionError) as info:
        testudo.Client(url_file=str(bad))
    message = str(info.value)
    assert "0644" in message
    assert f"chmod 600 {bad}" in message


# ----- views by indexing -----


def test_views_by_indexing(rc):
    every = rc[:]
    assert isinstance(every, testudo.DirectView)
    assert every.targets == [0, 1, 2, 3]
    assert every.block is False
    assert rc[::2].targets == [0, 2]
    assert rc[1::2].targets == [1, 3]
    assert rc[-1:].targets == [3]
    one = rc[1]
    assert one.targets == 1 and isinstance(one.targets, int)
    assert rc[[0, 3]].targets == [0, 3]
    assert len(rc[[0, 3]]) == 2 and len(one) == 1
    assert [v.targets for v in rc] == [0, 1, 2, 3]


def test_views_run_on_their_targets(rc):
    getpid = os.getpid
    pids = rc[:].apply_sync(getpid)
    assert len(set(pids)) == 4 and os.getpid() not in pids
    assert rc[[0, 3]].apply_sync(getpid) == [pids[0], pids[3]]
    assert rc[::2].apply_sync(getpid) == [pids[0], pids[2]]
    assert rc[1].apply_sync(getpid) == pids[1]


def test_single_engine_view_returns_bare_values(rc):
    view = rc[2]
    view.block = True
    view["x"] = 7
    assert view["x"] == 7
    assert view.apply(lambda a: a * 2, 21) == 42
    assert view.pull(["x"]) == [7]
    assert view.execute("y = x + 1").get().execute_result is None
    assert view.pull("y") == 8
    assert rc[[2]].pull("y", block=True) == [8]


def test_unregistered_engine_raises_index_error(rc):
    with pytest.raises(IndexError) as info:
        rc[7]
    assert "engine 7 is not registered (registered: [0, 1, 2, 3])" in str(info.value)
    with pytest.raises(IndexError) as info:
        rc[[0, 9]]
    assert "engine 9 is not registered" in str(info.value)
    with pytest.raises(TypeError):
        rc["zero"]


def test_negative_engine_indices_count_from_the_end_of_ids(rc):
    # As ipyparallel: an int target below 0 indexes rc.ids (here [0, 1, 2, 3]).
    getpid = os.getpid
    pids = dict(zip(rc.ids, rc[:].apply_sync(getpid)))
    last = rc[-1]
    assert last.targets == 3 and isinstance(last.targets, int)
    assert last.apply_sync(getpid) == pids[3]
    assert rc[-4].targets == 0
    assert rc.direct_view(-2).targets == 2
    assert rc.direct_view(-2).apply_sync(getpid) == pids[2]
    lview = rc.load_balanced_view(-1)
    assert lview.targets == [3]
    assert {lview.apply_sync(getpid) for _ in range(4)} == {pids[3]}
    # Per call too, wherever an engine id is taken.
    assert rc[:].apply_async(getpid).get(timeout=10) == list(pids.values())
    assert rc[:].execute("import os; pid = os.getpid()", targets=-3, block=True).get().engine_id == 1
    assert rc[1].pull("pid", block=True) == pids[1]
    assert rc.queue_status(targets=-1) == rc.queue_status(targets=3)
    with pytest.raises(IndexError, match="engine index -5 is out of range: 4 engine"):
        rc[-5]
    with pytest.raises(IndexError, match="-5"):
        rc.direct_view(-5)
    with pytest.raises(IndexError, match="-5"):
        rc.load_balanced_view(-5)


def test_client_block_reaches_views_made_afterwards(rc):
    before = rc[:]
    assert rc.block is False
    rc.block = True
    # ipyparallel's views take the client's block when made: these block...
    views = [rc[:], rc[0], rc[-1], rc[::2], rc.direct_view(), rc.direct_view(1), rc.broadcast_view(),
             rc.load_balanced_view(), *rc]
    assert [v.block for v in views] == [True] * len(views)
    assert rc[:].apply(lambda: 5) == [5, 5, 5, 5]
    assert rc[0].apply(lambda: 6) == 6
    assert rc.load_balanced_view().apply(lambda: 7) == 7
    assert rc[:].push({"z": 1}) == [None] * 4
    assert rc[1]["z"] == 1
    # ...a view made before, or told otherwise, does not.
    assert before.block is False
    assert isinstance(before.apply(lambda: 5), testudo.AsyncResult)
    assert rc.direct_view(block=False).block is False
    assert rc.load_balanced_view(block=False).block is False
    rc.block = False
    assert rc[:].block is False


def test_client_wait_takes_msg_ids_results_and_futures(rc):
    lview = rc.load_balanced_view()
    slow = lview.apply_async(time.sleep, 0.5)
    assert isinstance(slow.msg_ids[0], str)
    assert rc.wait(slow.msg_ids[0], timeout=0.05) is False  # one msg_id
    t0 = time.monotonic()
    assert rc.wait(slow.msg_ids, timeout=10) is True  # a list of them
    assert time.monotonic() - t0 > 0.3 and slow.ready()

    later = concurrent.futures.Future()  # a plain Future, as ipyparallel's wait takes
    threading.Timer(0.4, later.set_result, [1]).start()
    ar = rc[0].apply_async(time.sleep, 0.2)
    assert rc.wait([ar, later], timeout=0.05) is False
    assert rc.wait([ar.msg_ids[0], later], timeout=10) is True
    assert later.done() and ar.ready()

    # A msg_id with nothing outstanding here counts as done, as in ipyparallel.
    assert rc.wait("987654321", timeout=0) is True
    assert rc.wait(slow.msg_ids, timeout=0) is True
    # An int is an index into rc.history, as in ipyparallel.
    last = rc[0].apply_async(time.sleep, 0.3)
    assert rc.history[-1] == last.msg_ids[0]
    assert rc.wait(-1, timeout=0) is False
    assert rc.wait(-1, timeout=10) is True and last.ready()
    with pytest.raises(IndexError):
        rc.wait(10**9)
    with pytest.raises(TypeError, match="dict"):
        rc.wait([{}])


def test_direct_view_all_tracks_engines(rc):
    view = rc.direct_view()
    assert view.targets == "all"
    assert view.apply_sync(lambda: 1) == [1, 1, 1, 1]
    single = rc.direct_view(3, block=True)
    assert single.targets == 3 and single.block is True
    assert single.apply(lambda: "three") == "three"


# ----- the reference example, written the ipyparallel way -----


def test_reference_example(rc):
    dview = rc[:]
    dview.block = True
    dview.push(dict(a=5, b=10))
    rc[::2].execute("c=a+b")
    rc[1::2].execute("c=a-b")
    assert rc[:]["c"] == [15, -5, 15, -5]
    assert dview.pull(["a", "b", "c"]) == [[5, 10, 15], [5, 10, -5], [5, 10, 15], [5, 10, -5]]
    dview.clear()


# ----- waiting on the client -----


def test_client_wait_and_outstanding(rc):
    ar = rc[:].execute("import time; time.sleep(0.5)")
    assert ar.msg_ids and rc.outstanding
    assert rc.wait(ar, timeout=0.05) is False
    assert rc.wait(timeout=10) is True
    assert ar.ready()
    assert rc.outstanding == set()


def test_cluster_status(rc):
    status = rc.cluster_status()
    assert sorted(e["id"] for e in status["engines"]) == [0, 1, 2, 3]
    assert status["clients"] >= 1


# ----- closing -----


def test_context_manager_closes(cluster):
    with cluster.client() as client:
        assert client.ids == [0, 1, 2, 3]
        view = client[:]
    assert "closed" in repr(client)
    with pytest.raises(ConnectionError, match="client is closed"):
        client.ids
    with pytest.raises(ConnectionError, match="client is closed"):
        view.apply_sync(lambda: 1)


def test_closed_client_raises_connection_error(cluster):
    client = cluster.client()
    view = client[:]
    client.close()
    client.close()  # twice is fine
    with pytest.raises(ConnectionError, match="client is closed"):
        len(client)
    with pytest.raises(ConnectionError, match="client is closed"):
        client[:]
    with pytest.raises(ConnectionError, match="client is closed"):
        view.execute("a = 1")
    with pytest.raises(ConnectionError, match="client is closed"):
        view.push({"a": 1})


def test_close_fails_pending_results(cluster):
    client = cluster.client()
    ar = client[0].execute("import time; time.sleep(3)")
    t0 = time.monotonic()
    client.close()
    assert ar.ready()
    with pytest.raises(testudo.RemoteError) as info:
        ar.get(timeout=5)
    assert time.monotonic() - t0 < 3
    assert info.value.ename == "ConnectionError"
    assert isinstance(info.value, ConnectionError)
    assert info.value.engine_info["engine_id"] == 0


# ----- damage: own clusters -----


def test_connection_loss_mid_get(own_cluster):
    c = own_cluster(2)
    try:
        with c.client() as client:
            client.wait_for_engines(2, timeout=30)
            ar = client[:].execute("import time; time.sleep(30)")
            single = client[1].execute("import time; time.sleep(30)")
            time.sleep(0.3)
            assert not ar.ready()
            os.kill(c.controller_pid, signal.SIGKILL)
            t0 = time.monotonic()
            with pytest.raises(testudo.CompositeError) as info:
                ar.get(timeout=20)
            assert time.monotonic() - t0 < 10
            assert [e[0] for e in info.value.elist] == ["ConnectionError", "ConnectionError"]
            assert [e[3]["engine_id"] for e in info.value.elist] == [0, 1]
            assert "connection to the controller lost" in info.value.elist[0][1]
            with pytest.raises(testudo.RemoteError) as one:
                single.get(timeout=20)
            assert time.monotonic() - t0 < 10
            assert one.value.ename == "ConnectionError"
            assert isinstance(one.value, ConnectionError) and one.value.outcome == testudo.Outcome.CONNECTION_LOST
            assert one.value.engine_info["engine_id"] == 1
            # Later calls fail at once with a clear error; nothing hangs.
            with pytest.raises(ConnectionError, match="connection to the controller lost"):
                client.ids
    finally:
        kill_processes(c)


def test_engine_killed_mid_task(own_cluster):
    c = own_cluster(2)
    try:
        with c.client() as client:
            client.wait_for_engines(2, timeout=30)
            pids = client[:].apply_sync(os.getpid)
            ar = client[0].execute("import time; time.sleep(30)")
            time.sleep(0.3)
            os.kill(pids[0], signal.SIGKILL)
            t0 = time.monotonic()
            with pytest.raises(testudo.RemoteError) as info:
                ar.get(timeout=20)
            assert time.monotonic() - t0 < 10
            err = info.value
            assert err.ename == "EngineError"
            assert isinstance(err, testudo.EngineError) and err.outcome == testudo.Outcome.ENGINE_DIED
            assert "engine 0 died or disconnected" in err.evalue
            assert err.engine_info["engine_id"] == 0
            assert wait_until(lambda: client.ids == [1])
            assert client[1].apply_sync(lambda: "still here") == "still here"
    finally:
        kill_processes(c)


def test_engine_death_stays_engine_error_after_connection_loss(own_cluster):
    # Engine 0 dies (the controller reports it), then the controller goes too before
    # engine 1 answers: each engine's error keeps its own cause.
    c = own_cluster(2)
    try:
        with c.client() as client:
            client.wait_for_engines(2, timeout=30)
            pids = client[:].apply_sync(os.getpid)
            ar = client[:].execute("import time; time.sleep(30)")
            time.sleep(0.3)
            os.kill(pids[0], signal.SIGKILL)
            assert wait_until(lambda: client.ids == [1])
            os.kill(c.controller_pid, signal.SIGKILL)
            with pytest.raises(testudo.CompositeError) as info:
                ar.get(timeout=20)
            assert [(e[0], e[3]["engine_id"]) for e in info.value.elist] == [
                ("EngineError", 0), ("ConnectionError", 1)]
    finally:
        kill_processes(c)


def test_shutdown_hub_stops_every_process(own_cluster):
    c = own_cluster(2)
    client = c.client()
    client.wait_for_engines(2, timeout=30)
    pids = [c.controller_pid, *c.engine_pids]
    assert not any(pid_gone(p) for p in pids)
    # Engines only: the chosen engine goes, the controller and the other engine stay.
    victim = client[0].apply_sync(__import__("os").getpid)
    client.shutdown(targets=[0], block=True)
    assert client.ids == [1]
    assert wait_until(lambda: pid_gone(victim), timeout=10)
    assert not pid_gone(c.controller_pid)
    client.shutdown(hub=True)
    assert wait_until(lambda: all(pid_gone(p) for p in pids), timeout=10)
    with pytest.raises(ConnectionError):
        client.ids
    client.close()


def test_wait_for_engines_future_resolves_when_an_engine_comes(own_cluster):
    c = own_cluster(1)
    with c.client() as client:
        client.wait_for_engines(1, timeout=30)
        future = client.wait_for_engines(2, timeout=60, block=False)
        assert not future.done()
        c.run("engines", "start", "-n", "1")
        assert future.result(timeout=60) is None
        assert len(client.ids) == 2
