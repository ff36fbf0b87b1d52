"""LoadBalancedView against a real, secure local cluster: apply and map placed by the
controller's scheduler, flags, dependencies (after/follow/timeout), retries after an engine
dies, abort, interrupt and queue_status. The shape follows ipyparallel's test_lbview.py and
test_dependency.py; the tests are our own."""

import asyncio
import os
import signal
import time

import pytest

import testudo
from testudo import AsyncMapResult, AsyncResult
from conftest import kill_processes, wait_until


@testudo.interactive  # travels by value: engines cannot import this test module
def sleep_then(seconds, value):
    import time
    time.sleep(seconds)
    return value


@testudo.interactive
def mark_then_sleep(marker, seconds, value):
    # Creates `marker` once running, so a test knows it started (abort leaves it alone then).
    import time
    open(marker, "w").close()
    time.sleep(seconds)
    return value


@testudo.interactive
def pid_after(seconds):
    import os
    import time
    time.sleep(seconds)
    return os.getpid()


@testudo.interactive
def spin():
    while True:
        pass


@testudo.interactive
def fail():
    return 1 / 0


@pytest.fixture
def lview(rc):
    view = rc.load_balanced_view()
    yield view
    rc.wait(timeout=30)


@pytest.fixture
def pids(rc):
    """{engine_id: pid} of the shared cluster's engines."""
    return dict(zip(rc.ids, rc[:].apply_sync(os.getpid)))


def engine_running(rc, engine, n=1, timeout=10):
    return wait_until(lambda: rc.queue_status(engine)["tasks"] == n, timeout=timeout)


# ----- apply -----


def test_apply_variants(lview, rc):
    def add(a, b=1):
        return a + b

    assert lview.block is False
    ar = lview.apply(add, 1, b=2)
    assert isinstance(ar, AsyncResult)
    assert ar.get(timeout=10) == 3  # one value, not a list
    assert len(ar.msg_ids) == 1
    assert ar.targets[0] in rc.ids and len(ar.targets) == 1
    assert ar.metadata["engine_id"] == ar.targets[0]
    assert lview.apply_sync(add, 5) == 6
    ar = lview.apply_async(add, 1, 1)
    assert isinstance(ar, AsyncResult)
    assert ar.get(timeout=10) == 2
    lview.block = True
    assert lview.apply(add, 2, 2) == 4
    with pytest.raises(TypeError, match="is not callable"):
        lview.apply(5)


def test_load_balanced_view_repr_and_flags_from_constructor(rc):
    assert repr(rc.load_balanced_view()) == "<LoadBalancedView None>"
    view = rc.load_balanced_view([1, 2], block=True, retries=2)
    assert repr(view) == "<LoadBalancedView [1, 2]>"
    assert (view.block, view.retries, view.timeout, view.after, view.follow) == (True, 2, None, None, None)


def test_apply_spreads_over_every_engine(lview, pids):
    ars = [lview.apply_async(pid_after, 0.2) for _ in range(16)]
    got = [ar.get(timeout=20) for ar in ars]
    assert set(got) == set(pids.values())
    # The reply's engine id is where it ran.
    assert all(pids[ar.metadata["engine_id"]] == pid for ar, pid in zip(ars, got))


def test_apply_remote_error_is_a_single_remote_error(lview):
    with pytest.raises(testudo.RemoteError) as info:
        lview.apply_sync(fail)
    assert not isinstance(info.value, testudo.CompositeError)
    assert info.value.ename == "ZeroDivisionError"
    assert info.value.evalue == "division by zero"


# ----- map -----


def test_map_sync_async_and_several_sequences(lview):
    assert lview.map_sync(lambda x: x * 2, range(10)) == [x * 2 for x in range(10)]
    amr = lview.map_async(lambda x, y: x + y, range(10), range(10, 20))
    assert isinstance(amr, AsyncMapResult)
    assert amr.get(timeout=10) == [x + y for x, y in zip(range(10), range(10, 20))]
    amr = lview.map(lambda x, y, z: (x, y, z), "abc", [1, 2, 3], (4.0, 5.0, 6.0))
    assert isinstance(amr, AsyncMapResult)  # block=False by default
    assert amr.get(timeout=10) == [("a", 1, 4.0), ("b", 2, 5.0), ("c", 3, 6.0)]
    lview.block = True
    assert lview.map(str, [1, 2]) == ["1", "2"]


def test_map_shortest_sequence_wins(lview):
    # ipyparallel's test_map_short_first / test_map_short_last: zip semantics.
    assert lview.map_sync(lambda x, y: x * y, range(3), range(10)) == [0, 1, 4]
    assert lview.map_sync(lambda x, y: x * y, range(10), range(3)) == [0, 1, 4]


def test_map_generator_and_iterable(lview):
    assert lview.map_sync(lambda x: x + 1, (i for i in range(7))) == list(range(1, 8))
    assert lview.map_sync(lambda x: -x, {3: "a", 4: "b"}) == [-3, -4]


@pytest.mark.parametrize("chunksize", [1, 2, 3, 7, 20, 100])
def test_map_chunksize(lview, chunksize):
    amr = lview.map_async(lambda x: x ** 2, range(20), chunksize=chunksize)
    assert amr.get(timeout=20) == [x ** 2 for x in range(20)]
    assert len(amr.msg_ids) == -(-20 // chunksize)  # one task per chunk


def test_map_bad_chunksize_and_no_sequence(lview):
    with pytest.raises(ValueError, match="chunksize"):
        lview.map(str, range(3), chunksize=0)
    with pytest.raises(ValueError, match="chunksize"):
        lview.map(str, range(3), chunksize=1.5)
    with pytest.raises(ValueError, match="at least one sequence"):
        lview.map(str)


def test_map_empty_sequence(lview):
    assert lview.map_sync(str, []) == []
    amr = lview.map_async(str, [], [1, 2])
    assert amr.get(timeout=5) == []
    assert list(lview.map_async(str, [], ordered=False)) == []


def test_map_unordered_yields_everything_as_it_finishes(lview):
    # Four engines, four items: the last item is the quickest.
    delays = [0.9, 0.6, 0.3, 0.0]
    amr = lview.map_async(sleep_then, delays, delays, ordered=False)
    t0 = time.monotonic()
    it = iter(amr)
    first = next(it)
    assert first == 0.0
    assert time.monotonic() - t0 < 0.6  # did not wait for the slow ones
    rest = list(it)
    assert sorted([first, *rest]) == sorted(delays)
    assert rest == [0.3, 0.6, 0.9]


def test_map_ordered_iteration_keeps_submission_order(lview):
    delays = [0.6, 0.3, 0.0, 0.1]
    amr = lview.map_async(sleep_then, delays, range(4), ordered=True)
    assert list(amr) == [0, 1, 2, 3]


def test_map_remote_error(lview):
    def inverse(x):
        return 1 / x

    with pytest.raises(testudo.CompositeError) as info:
        lview.map_sync(inverse, [1, 0, 2])
    assert [e[0] for e in info.value.elist] == ["ZeroDivisionError"]
    amr = lview.map_async(inverse, [1, 0, 2])
    assert amr.get(timeout=10, return_exceptions=True)[0] == 1.0


def test_map_unknown_keyword_is_an_error(lview):
    # ipyparallel's map has no catch-all keyword: a misspelt flag must not pass silently.
    with pytest.raises(TypeError, match="retires"):
        lview.map(str, range(3), retires=2)


def test_map_per_call_flags_are_validated(lview):
    with pytest.raises(ValueError, match="retries"):
        lview.map(str, range(3), retries=-1)


# ----- flags -----


def test_flags_validation(lview):
    with pytest.raises(KeyError, match="invalid flag 'nonsense'"):
        lview.set_flags(nonsense=True)
    with pytest.raises(ValueError, match="retries"):
        lview.set_flags(retries=-1)
    with pytest.raises(ValueError, match="retries"):
        lview.set_flags(retries="2")
    with pytest.raises(ValueError, match="timeout"):
        lview.set_flags(timeout=-1)
    with pytest.raises(ValueError, match="retries"):
        lview.client.load_balanced_view(retries=-3)
    with pytest.raises(ValueError, match="retries"):
        lview.set_flags(block=True, retries=True)
    assert lview.retries == 0 and lview.timeout is None  # unchanged by the failed calls
    assert lview.block is False  # all or nothing
    lview.set_flags(retries=3, timeout=2.5, block=True)
    assert (lview.retries, lview.timeout, lview.block) == (3, 2.5, True)


def test_temp_flags_restores(lview, rc):
    with lview.temp_flags(block=True, targets=[1], retries=1):
        assert (lview.block, lview.targets, lview.retries) == (True, [1], 1)
        assert lview.apply(lambda: "blocked") == "blocked"
        ar = lview.apply_async(lambda: 1)
        ar.get(timeout=10)
        assert ar.metadata["engine_id"] == 1
    assert (lview.block, lview.targets, lview.retries) == (False, None, 0)
    with pytest.raises(ZeroDivisionError):
        with lview.temp_flags(block=True):
            1 / 0
    assert lview.block is False
    with pytest.raises(KeyError):
        with lview.temp_flags(bogus=1):
            pass
    assert isinstance(lview.apply(lambda: 1), AsyncResult)


def test_targets_restriction(rc, pids):
    view = rc.load_balanced_view(targets=[1, 3])
    got = view.map_sync(lambda x: __import__("os").getpid(), range(24))
    assert set(got) == {pids[1], pids[3]}
    other = rc.load_balanced_view()
    other.targets = [2]
    assert {other.apply_sync(pid_after, 0) for _ in range(4)} == {pids[2]}
    assert set(rc.load_balanced_view(targets=slice(0, 2)).map_sync(pid_after, [0.1] * 8)) == {pids[0], pids[1]}
    with pytest.raises(IndexError, match="9"):
        rc.load_balanced_view(targets=[0, 9]).apply(pid_after, 0)


# ----- dependencies -----


def test_after_waits_for_its_dependency(lview):
    a = lview.apply_async(sleep_then, 1.0, "a")
    with lview.temp_flags(after=a):
        b = lview.apply_async(time.time)
    assert a.get(timeout=10) == "a"
    assert b.get(timeout=10) >= a.metadata["completed"].timestamp()
    assert b.metadata["started"] >= a.metadata["completed"]
    # msg_ids (str) work as dependencies too.
    d = lview.apply_async(sleep_then, 0.5, "d")
    with lview.temp_flags(after=d.msg_ids):
        e = lview.apply_async(time.time)
    assert e.get(timeout=10) and d.get(timeout=10) == "d"
    assert e.metadata["started"] >= d.metadata["completed"]


def test_after_a_failed_task_is_an_impossible_dependency(lview):
    a = lview.apply_async(fail)
    with lview.temp_flags(after=a):
        b = lview.apply_async(sleep_then, 0, "never")
    with pytest.raises(testudo.RemoteError) as info:
        b.get(timeout=10)
    assert info.value.ename == "ImpossibleDependency"
    assert f"dependency {a.msg_ids[0]} failed" in info.value.evalue
    assert b.metadata["started"] is None
    with pytest.raises(testudo.RemoteError) as info:
        a.get(timeout=1)
    assert info.value.ename == "ZeroDivisionError"


def test_invalid_dependency(lview):
    with pytest.raises(ValueError, match="msg_id"):
        lview.set_flags(after="not-a-msg-id")
        lview.apply_async(str, 1)
    lview.set_flags(after=None)
    # A dependency that names no task: ipyparallel's InvalidDependency, an ImpossibleDependency.
    with pytest.raises(testudo.error.InvalidDependency) as info:
        with lview.temp_flags(after=["987654321"]):
            lview.apply_sync(str, 1)
    assert info.value.ename == "InvalidDependency"
    assert isinstance(info.value, testudo.RemoteError)
    assert isinstance(info.value, testudo.error.ImpossibleDependency)
    assert info.value.outcome == testudo.Outcome.DEPENDENCY_FAILED
    with pytest.raises(testudo.error.InvalidDependency):
        with lview.temp_flags(follow="987654321"):
            lview.apply_sync(str, 1)


def test_dependency_timeout(lview):
    a = lview.apply_async(sleep_then, 2.0, "slow")
    t0 = time.monotonic()
    with lview.temp_flags(after=a, timeout=0.5):
        b = lview.apply_async(str, 1)
    with pytest.raises(testudo.RemoteError) as info:
        b.get(timeout=10)
    took = time.monotonic() - t0
    assert info.value.ename == "DependencyTimeout"
    assert isinstance(info.value, testudo.error.DependencyTimeout) and not isinstance(info.value, TimeoutError)
    assert isinstance(info.value, testudo.error.TaskTimeout)  # what ipyparallel raises here
    assert 0.45 <= took < 1.8
    assert not a.ready()
    assert a.get(timeout=10) == "slow"
    # Met in time: no timeout.
    c = lview.apply_async(sleep_then, 0.2, "c")
    with lview.temp_flags(after=c, timeout=5):
        assert lview.apply_sync(str, 2) == "2"


def test_follow_runs_where_the_dependency_ran(lview, pids):
    for _ in range(3):
        a = lview.apply_async(pid_after, 0.2)
        with lview.temp_flags(follow=a):
            followers = [lview.apply_async(pid_after, 0) for _ in range(6)]
        where = a.get(timeout=10)
        assert [f.get(timeout=10) for f in followers] == [where] * 6
        assert all(f.metadata["engine_id"] == a.metadata["engine_id"] for f in followers)
        assert all(f.metadata["started"] >= a.metadata["completed"] for f in followers)


def test_follow_outside_targets_is_impossible(lview):
    a = lview.apply_async(pid_after, 0)
    a.get(timeout=10)
    elsewhere = [e for e in lview.client.ids if e != a.metadata["engine_id"]]
    with lview.temp_flags(follow=a, targets=elsewhere):
        b = lview.apply_async(pid_after, 0)
    with pytest.raises(testudo.RemoteError) as info:
        b.get(timeout=10)
    assert info.value.ename == "ImpossibleDependency"


# ----- abort -----


def test_abort_queued_tasks(rc, tmp_path):
    view = rc.load_balanced_view(targets=[0])
    marker = str(tmp_path / "started")
    running = [view.apply_async(mark_then_sleep, marker, 1.0, i) for i in range(2)]  # hwm 2: on engine 0
    queued = [view.apply_async(sleep_then, 0, f"q{i}") for i in range(4)]
    assert engine_running(rc, 0, 2) and wait_until(lambda: os.path.exists(marker))
    assert rc.queue_status()["unassigned"] == 4
    assert queued[0].abort() == 1
    assert rc.abort([queued[1], queued[2].msg_ids[0]]) == 2
    # None was in the controller: the running one goes on, the engine drops the one behind it.
    assert rc.abort(running) == 0
    for ar in [*queued[:3], running[1]]:
        with pytest.raises(testudo.RemoteError) as info:
            ar.get(timeout=10)
        assert info.value.ename == "TaskAborted"
        assert isinstance(info.value, testudo.error.TaskAborted)
    assert running[0].get(timeout=10) == 0
    assert queued[3].get(timeout=10) == "q3"
    assert rc.queue_status()["unassigned"] == 0


def test_view_abort_aborts_everything_outstanding(rc, tmp_path):
    view = rc.load_balanced_view(targets=[3])
    marker = str(tmp_path / "started")
    running = [view.apply_async(mark_then_sleep, marker, 0.8, i) for i in range(2)]
    assert engine_running(rc, 3, 2) and wait_until(lambda: os.path.exists(marker))
    amr = view.map_async(str, range(5))
    assert view.abort() == 5
    with pytest.raises(testudo.CompositeError) as info:
        amr.get(timeout=10)
    assert [e[0] for e in info.value.elist] == ["TaskAborted"] * 5
    assert running[0].get(timeout=10) == 0  # running: it goes on
    with pytest.raises(testudo.error.TaskAborted):
        running[1].get(timeout=10)  # sent to the engine, not started: dropped there


# ----- interrupt and signals -----


def test_interrupt_spinning_task(own_cluster):
    c = own_cluster(2)
    with c.client() as rc:
        rc.wait_for_engines(2, timeout=30)
        view = rc.load_balanced_view(targets=[1])
        spinning = view.apply_async(spin)
        behind = view.apply_async(sleep_then, 0.3, "behind")  # already sent to engine 1 (hwm 2)
        assert engine_running(rc, 1, 2)
        time.sleep(0.3)
        assert not spinning.ready()
        t0 = time.monotonic()
        assert rc.interrupt(targets=[1]) == 1
        with pytest.raises(testudo.RemoteError) as info:
            spinning.get(timeout=10)
        assert info.value.ename == "KeyboardInterrupt"
        assert time.monotonic() - t0 < 5
        assert behind.get(timeout=10) == "behind"
        assert rc[1].apply_sync(lambda: "alive") == "alive"


def test_send_signal(own_cluster):
    c = own_cluster(1)
    with c.client() as rc:
        rc.wait_for_engines(1, timeout=30)
        for bad in (signal.SIGTERM, signal.SIGKILL, "SIGTERM", 15):
            with pytest.raises(ValueError, match="only SIGINT"):
                rc.send_signal(bad)
        ar = rc.load_balanced_view().apply_async(spin)
        assert engine_running(rc, 0, 1)
        assert rc.send_signal(signal.SIGINT) == 1
        with pytest.raises(testudo.RemoteError) as info:
            ar.get(timeout=10)
        assert info.value.ename == "KeyboardInterrupt"
        ar = rc[0].apply_async(spin)
        assert engine_running(rc, 0, 1)
        assert rc.send_signal("SIGINT", targets=[0]) == 1
        with pytest.raises(testudo.RemoteError) as info:
            ar.get(timeout=10)
        assert info.value.ename == "KeyboardInterrupt"
        assert rc[0].apply_sync(lambda: 7) == 7


# ----- queue_status -----


def test_queue_status_shape_and_values(rc):
    rc.wait(timeout=30)
    # A sealing client (the default) pairs with the engines before its first load-balanced
    # request, one sealed empty pull each, which the counts include: done before counting.
    rc.load_balanced_view().apply_sync(int)
    before = rc.queue_status()
    assert set(before) == {*rc.ids, "unassigned"}  # ipyparallel's keys, no others
    for engine in rc.ids:
        assert set(before[engine]) == {"queue", "tasks", "completed"}
        assert before[engine]["tasks"] == 0 and before[engine]["queue"] == 0
    assert before["unassigned"] == 0

    view = rc.load_balanced_view(targets=[2])
    busy = [view.apply_async(sleep_then, 0.8, i) for i in range(3)]
    assert engine_running(rc, 2, 2)
    with view.temp_flags(after=busy[2]):
        waiting = view.apply_async(str, "w")
    status = rc.queue_status()
    assert status[2] == {"queue": 0, "tasks": 2, "completed": before[2]["completed"]}
    assert status["unassigned"] == 2  # one queued, one waiting for its dependency
    assert rc.queue_status(2) == status[2]
    assert set(rc.queue_status([0, 2])) == {0, 2, "unassigned"}
    lists = rc.queue_status(verbose=True)  # msg_ids of this user's tasks instead of counts
    assert sorted(lists[2]["tasks"], key=int) == sorted((m for ar in busy[:2] for m in ar.msg_ids), key=int)
    assert set(lists["unassigned"]) == {*busy[2].msg_ids, *waiting.msg_ids}
    # Direct tasks queue behind the window of 2.
    direct = [rc[2].apply_async(sleep_then, 0, i) for i in range(3)]
    assert wait_until(lambda: rc.queue_status(2)["queue"] >= 1, timeout=5)
    assert waiting.get(timeout=20) == "w"
    assert [ar.get(timeout=10) for ar in direct] == [0, 1, 2]
    after = rc.queue_status()
    assert after[2]["completed"] == before[2]["completed"] + 3 + 1 + 3
    assert after[2]["tasks"] == 0 and after["unassigned"] == 0


# ----- retries -----


def test_retries_after_engine_death(own_cluster, tmp_path):
    c = own_cluster(3)
    rc = c.client()
    try:
        rc.wait_for_engines(3, timeout=30)
        pids = dict(zip(rc.ids, rc[:].apply_sync(os.getpid)))
        marker = str(tmp_path / "first-attempt")

        def first_attempt_hangs(marker):
            import os
            import time
            if not os.path.exists(marker):
                open(marker, "w").close()
                time.sleep(60)
            return os.getpid()

        view = rc.load_balanced_view(targets=[0, 1], retries=1)
        ar = view.apply_async(first_attempt_hangs, marker)
        assert wait_until(lambda: os.path.exists(marker))
        first = next(e for e in (0, 1) if rc.queue_status(e)["tasks"] == 1)
        other = 1 - first
        os.kill(pids[first], signal.SIGKILL)
        assert ar.get(timeout=20) == pids[other]
        assert ar.metadata["engine_id"] == other

        # retries=0: the engine's death is the task's error.
        once = rc.load_balanced_view(targets=[2]).apply_async(sleep_then, 60, "never")
        assert engine_running(rc, 2, 1)
        os.kill(pids[2], signal.SIGKILL)
        with pytest.raises(testudo.RemoteError) as info:
            once.get(timeout=20)
        assert info.value.ename == "EngineError"
        assert "engine 2 died" in info.value.evalue
    finally:
        rc.close()
        kill_processes(c)


# ----- asyncio -----


def test_asyncio_wrap_future(lview):
    async def main():
        value = await asyncio.wrap_future(lview.apply_async(sleep_then, 0.2, "async"))
        mapped = await asyncio.wrap_future(lview.map_async(lambda x: x * 3, range(5)))
        try:
            await asyncio.wrap_future(lview.apply_async(fail))
        except testudo.RemoteError as exc:
            return value, mapped, exc.ename
        return value, mapped, None

    assert asyncio.run(main()) == ("async", [0, 3, 6, 9, 12], "ZeroDivisionError")


def test_a_big_map_asks_its_result_once_per_sweep_not_once_per_chunk(lview, monkeypatch):
    # A map of n items is one result over n chunks; the client's sweep of finished requests
    # asked that result "are all your chunks in?" once per chunk, each answer looking at all n
    # chunks: a 10,000-item map_sync crawled at ~500 items/s. Counted here, not timed.
    calls = []
    original = AsyncResult._native_ready

    def counting(self):
        calls.append(len(self._children))
        return original(self)

    monkeypatch.setattr(AsyncResult, "_native_ready", counting)
    assert lview.map_sync(abs, range(-3000, 0)) == list(range(3000, 0, -1))
    looked_at = sum(calls)  # chunks examined by every question put to a result
    assert looked_at < 100_000, f"{len(calls)} questions looked at {looked_at} chunks"
