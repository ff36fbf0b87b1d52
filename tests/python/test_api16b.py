"""ipyparallel 7.1 API, the rest of it: executors, the client's and views' history / results /
metadata / purges / resubmit, view methods that go through the client, and view.importer. Our
own tests against a real cluster; the behaviour compared is ipyparallel's (client/client.py,
client/view.py, tests/test_executor.py, test_client.py, test_view.py)."""

import concurrent.futures
import os
import time
import types

import pytest

import testudo
from testudo import error

from conftest import wait_until


@testudo.interactive
def double(x):
    return 2 * x


@testudo.interactive
def has_kept():
    return "kept" in globals()


@testudo.interactive
def engine_pid():
    import os
    return os.getpid()


# ----- executors -----

def test_client_executor_is_load_balanced(rc):
    executor = rc.executor()
    assert isinstance(executor, concurrent.futures.Executor)
    assert isinstance(executor.view, testudo.LoadBalancedView)
    assert executor.submit(lambda x: 2 * x, 5).result(timeout=10) == 10
    only = rc.executor(targets=[rc.ids[1]])
    assert only.view.targets == [rc.ids[1]]
    pids = {only.submit(engine_pid).result(timeout=10) for _ in range(4)}
    assert pids == {rc[1].apply_sync(engine_pid)}


def test_view_executor_submit_map_and_errors(rc):
    view = rc.load_balanced_view()
    executor = view.executor
    assert executor.view is view and view.executor is executor
    future = executor.submit(lambda x, y: x * y, 2, 3)
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(timeout=10) == 6
    gen = executor.map(double, range(7))
    assert isinstance(gen, types.GeneratorType)
    assert list(gen) == [0, 2, 4, 6, 8, 10, 12]
    assert list(executor.map(lambda a, b: a - b, [5, 6, 7], [1, 1])) == [4, 5]
    with pytest.raises(error.RemoteError) as info:
        executor.submit(lambda: 1 / 0).result(timeout=10)
    assert info.value.ename == "ZeroDivisionError"
    # Futures from it work with concurrent.futures' helpers.
    futures = [executor.submit(double, i) for i in range(4)]
    done, _ = concurrent.futures.wait(futures, timeout=10)
    assert len(done) == 4 and sorted(f.result() for f in done) == [0, 2, 4, 6]


def test_executor_context_waits_but_keeps_engines(rc):
    executor = rc.load_balanced_view().executor
    with executor:
        future = executor.submit(time.sleep, 0.5)
        assert not future.done()
    assert future.done()  # shutdown waited
    assert len(rc.ids) == 4  # and stopped no engine


def test_direct_view_executor(rc):
    view = rc[[0, 2]]
    executor = view.executor
    assert executor._max_workers == 2
    assert executor.submit(lambda: 7).result(timeout=10) == [7, 7]  # apply on every target
    assert list(executor.map(double, range(5))) == [0, 2, 4, 6, 8]
    assert list(view.imap(double, [1, 2])) == [2, 4]


# ----- client history / results / metadata -----

def test_history_results_and_metadata(rc):
    before = len(rc.history)
    a = rc[0].apply_async(lambda: "first")
    b = rc[:].apply_async(engine_pid)
    c = rc.load_balanced_view().apply_async(lambda: 1 / 0)
    rc.wait([a, b, c], timeout=10)
    sent = a.msg_ids + b.msg_ids + c.msg_ids
    assert rc.history[before:] == sent
    results = rc.results
    assert results[a.msg_ids[0]] == "first"
    assert [results[m] for m in b.msg_ids] == b.get()
    failed = results[c.msg_ids[0]]
    assert isinstance(failed, error.RemoteError) and failed.ename == "ZeroDivisionError"
    assert set(sent) <= set(results)
    md = rc.metadata[a.msg_ids[0]]
    assert md["engine_id"] == rc.ids[0] and md["status"] == "ok"
    assert md["submitted"] and md["started"] <= md["completed"]
    assert [rc.metadata[m]["engine_id"] for m in b.msg_ids] == rc.ids
    assert rc.metadata[c.msg_ids[0]]["status"] == "error"
    with pytest.raises(KeyError):
        results["123456789"]
    with pytest.raises(KeyError):
        rc.metadata["not a msg_id"]


def test_results_of_dropped_asyncresults_come_from_the_controller(rc):
    ar = rc[1].apply_async(lambda: print("out") or [1, 2, 3])
    ar.get(timeout=10)
    msg_id = ar.msg_ids[0]
    del ar  # the history keeps only the msg_id now
    assert rc.results[msg_id] == [1, 2, 3]
    md = rc.metadata[msg_id]
    assert md["engine_id"] == rc.ids[1] and md["stdout"] == "out\n"


def test_pending_tasks_are_in_metadata_not_results(rc):
    ar = rc[3].apply_async(time.sleep, 1.0)
    msg_id = ar.msg_ids[0]
    assert msg_id in rc.outstanding
    assert msg_id in rc.metadata and rc.metadata[msg_id]["status"] == "pending"
    assert msg_id not in rc.results
    with pytest.raises(KeyError):
        rc.results[msg_id]
    with pytest.raises(RuntimeError, match="outstanding"):
        rc.purge_local_results(msg_id)
    ar.get(timeout=10)
    assert msg_id not in rc.outstanding and rc.results[msg_id] is None


def test_purges(rc):
    a = rc[0].apply_async(lambda: "a")
    b = rc[0].apply_async(lambda: "b")
    rc.wait([a, b], timeout=10)
    rc.purge_local_results(a)
    assert a.msg_ids[0] not in rc.results and a.msg_ids[0] not in rc.metadata
    assert rc.results[b.msg_ids[0]] == "b"
    assert rc.get_result(a.msg_ids[0], block=True).get() == "a"  # the controller still has it
    assert rc.purge_hub_results(a) == 1
    with pytest.raises(KeyError):
        rc.get_result(a.msg_ids[0], block=True).get()
    assert rc.purge_results(b) == 1
    assert b.msg_ids[0] not in rc.results
    assert a.msg_ids[0] in rc.history  # purges keep the history, as ipyparallel's
    rc.purge_local_results("all")
    assert len(rc.results) == 0


def test_purge_hub_results_by_target(rc):
    on2 = rc[2].apply_async(lambda: 2)
    on3 = rc[3].apply_async(lambda: 3)
    rc.wait([on2, on3], timeout=10)
    assert rc.purge_hub_results(targets=[rc.ids[2]]) >= 1
    assert rc.result_status(on3.msg_ids)["completed"] == on3.msg_ids
    with pytest.raises(KeyError):
        rc.result_status(on2.msg_ids)


def test_resubmit(rc):
    ar = rc[2].apply_async(engine_pid)
    pid = ar.get(timeout=10)
    again = rc.resubmit(ar.msg_ids[0])
    assert again.get(timeout=10) == pid  # the same engine
    assert again.msg_ids != ar.msg_ids and rc.history[-1] == again.msg_ids[0]
    rc[:].execute("counter = 0", block=True)
    ex = rc[1].execute("counter += 1")
    ex.get(timeout=10)
    rc.resubmit(ex.msg_ids, block=True)
    assert rc[1]["counter"] == 2 and rc[0]["counter"] == 0
    lb = rc.load_balanced_view().apply_async(double, 21)
    lb.get(timeout=10)
    assert rc.resubmit(-1 if rc.history[-1] == lb.msg_ids[0] else lb.msg_ids[0], block=True) == 42
    assert rc.resubmit([ar.msg_ids[0], ar.msg_ids[0]]).get(timeout=10) == [pid, pid]
    # What the client does not keep: map tasks, pushes, running tasks, unknown ids.
    m = rc.load_balanced_view().map_async(double, [1])
    m.get(timeout=10)
    with pytest.raises(NotImplementedError, match="not kept"):
        rc.resubmit(m.msg_ids)
    # A task still running is sent again too, as ipyparallel does.
    slow = rc[0].apply_async(sleep_then, 0.3, "slow")
    again = rc.resubmit(slow.msg_ids)
    assert slow.get(timeout=10) == "slow" and again.get(timeout=10) == ["slow"]  # a list in, a list out
    with pytest.raises(KeyError):  # as ipyparallel's hub: a RemoteError that is a KeyError
        rc.resubmit("987654321")
    with pytest.raises(error.RemoteError) as info:
        rc.resubmit(["invalid"])
    assert info.value.ename == "KeyError"


def test_hub_history_clear_spin(rc):
    ar = rc[0].apply_async(lambda: 1)
    ar.get(timeout=10)
    hub = rc.hub_history()
    assert ar.msg_ids[0] in hub
    assert [int(m) for m in hub] == sorted(int(m) for m in hub)  # submission order
    rc[:].push({"kept": 1}, block=True)
    rc.clear(targets=[rc.ids[0]], block=True)
    assert rc[:].apply_sync(has_kept) == [False, True, True, True]
    rc.clear(block=True)
    assert rc[:].apply_sync(has_kept) == [False] * 4
    assert rc.spin() is None and rc[:].spin() is None


def test_purge_everything(own_cluster):
    cluster = own_cluster(1)
    rc = cluster.client()
    rc.wait_for_engines(1, timeout=30)
    ar = rc[0].apply_async(lambda: 1)
    ar.get(timeout=10)
    rc.purge_everything()
    assert rc.history == [] and len(rc.results) == 0
    assert rc.hub_history() == []
    rc.close()


# ----- views -----

def test_view_history_outstanding_results(rc):
    dv, lb = rc[[1, 2]], rc.load_balanced_view()
    a = dv.apply_async(lambda: 1)
    b = lb.apply_async(time.sleep, 0.5)
    c = dv.map_async(double, range(4))
    assert dv.history == a.msg_ids + c.msg_ids
    assert lb.history == b.msg_ids
    assert lb.outstanding == set(b.msg_ids)
    assert lb.wait(timeout=10)  # waits for this view's tasks
    assert b.ready() and lb.outstanding == set()
    dv.wait()
    assert dv.results[c.msg_ids[1]] == [4, 6]  # rc.results, shared
    assert dv.get_result(block=True).get() == [4, 6]  # the last of its history
    assert dv.get_result(0, block=True).get() == 1  # ints index the view's history (one msg_id each)
    assert dv.get_result([0, 1], block=True).get() == [1, 1]
    assert lb.get_result(b.msg_ids[0]).get(timeout=10) is None


def test_view_abort_queue_status_purge_shutdown(rc, tmp_path):
    # Tasks not started can be aborted: in the controller, or sent ahead to the engine.
    view = rc.load_balanced_view(targets=[rc.ids[3]])
    other = rc.load_balanced_view(targets=[rc.ids[3]])
    started = tmp_path / "started"

    @testudo.interactive
    def mark_then_sleep(seconds):
        import time
        open(str(started), "w").close()
        time.sleep(seconds)

    @testudo.interactive
    def pause(seconds):
        import time
        time.sleep(seconds)

    # The engine's adaptive window comes from the replies it measured: earlier tests' trivial
    # tasks (and a sealing client's pairing) may have widened it. Tasks of 50 ms, several at
    # once, bring it back to the 2 that tasks this long get.
    view.map_sync(pause, [0.05] * 6)
    running = view.map_async(mark_then_sleep, [0.5, 0.5])  # the engine takes two at a time
    assert wait_until(started.exists)  # the first runs: abort leaves it alone
    queued = view.apply_async(lambda: "never")
    others = other.apply_async(lambda: "runs")
    assert view.abort() == 1  # its own outstanding tasks, not other views'; one in the controller
    with pytest.raises(error.TaskAborted):
        queued.get(timeout=10)
    first, second = running.get(timeout=10, return_exceptions=True)
    assert first is None and isinstance(second, error.TaskAborted)  # the second waited on the engine
    assert others.get(timeout=10) == "runs"
    status = rc[3].queue_status()
    assert set(status) == {"queue", "tasks", "completed"}  # one engine: its own counts
    status = rc[[0, 1]].queue_status()
    assert set(status) == {rc.ids[0], rc.ids[1], "unassigned"}
    assert set(rc.load_balanced_view().queue_status()) == {*rc.ids, "unassigned"}
    assert view.purge_results(running) == 2
    with pytest.raises(KeyError):
        rc.get_result(running.msg_ids[0], block=True).get()


def test_view_shutdown_stops_its_engines(own_cluster):
    cluster = own_cluster(2)
    rc = cluster.client()
    rc.wait_for_engines(2, timeout=30)
    first, second = rc.ids
    rc[first].shutdown(block=True)
    assert rc.ids == [second]
    rc.close()


def test_importer(dview):
    with dview.importer:
        import colorsys
        from fractions import Fraction
    assert colorsys.rgb_to_hsv(0, 0, 0) == (0, 0, 0)
    assert dview.apply_sync(lambda: (colorsys.__name__, Fraction(1, 2) * 2)) == [("colorsys", 1)] * 4
    # Only the imports written in the block: what they import themselves stays local.
    assert dview.apply_sync(lambda: "numbers" in globals()) == [False] * 4


# ----- dependencies -----

@testudo.interactive
def is_engine(wanted):
    return engine_id == wanted  # noqa: F821 (pushed to each engine)


@testudo.interactive
def where(x):
    return engine_id, x  # noqa: F821


@pytest.fixture
def engine_ids_pushed(rc):
    for i in rc.ids:
        rc[i].push({"engine_id": i}, block=True)
    return rc.ids


def test_dependent_task_moves_to_an_engine_where_it_holds(rc, engine_ids_pushed):
    lb = rc.load_balanced_view()
    wanted = engine_ids_pushed[2]
    f = testudo.dependent(where, is_engine, wanted)
    assert f.__name__ == "where"
    results = [lb.apply_async(f, k) for k in range(6)]
    assert [ar.get(timeout=20) for ar in results] == [(wanted, k) for k in range(6)]
    assert all(ar.engine_id == wanted for ar in results)
    # map: each chunk likewise
    assert lb.map_sync(f, range(5), chunksize=2) == [(wanted, k) for k in range(5)]
    # a Future observed only through a callback (the client's dispatcher moves it)
    done = concurrent.futures.Future()
    lb.apply_async(f, "cb").add_done_callback(lambda ar: done.set_result(ar.result()))
    assert done.result(timeout=20) == (wanted, "cb")


def test_dependency_that_holds_nowhere_is_impossible(rc, engine_ids_pushed):
    lb = rc.load_balanced_view(targets=engine_ids_pushed[:2])
    f = testudo.depend(is_engine, engine_ids_pushed[3])(where)  # only outside the view's engines
    ar = lb.apply_async(f, 0)
    with pytest.raises(error.ImpossibleDependency) as info:
        ar.get(timeout=20)
    assert info.value.ename == "ImpossibleDependency"
    assert isinstance(info.value, error.UnmetDependency)
    # A DirectView runs it where it is sent: the unmet dependency is the result.
    with pytest.raises(error.RemoteError) as info:
        rc[0].apply_sync(f, 0)
    assert info.value.ename == "UnmetDependency"


def test_require(rc):
    lb = rc.load_balanced_view()
    rc[:].clear(block=True)

    @testudo.require("colorsys")
    @testudo.interactive
    def hsv(x):
        return colorsys.rgb_to_hsv(x, x, x)[2]  # noqa: F821 (imported by require)

    assert lb.apply_sync(hsv, 0.5) == 0.5

    @testudo.interactive
    def bar(a):
        return squared_by_require(a)  # noqa: F821 (a name only require gives the engine)

    helper = testudo.interactive(lambda a: a * a)
    helper.__name__ = "squared_by_require"

    with pytest.raises(error.RemoteError) as info:
        lb.apply_sync(bar, 5)
    assert info.value.ename == "NameError"
    assert lb.apply_sync(testudo.require(helper)(bar), 5) == 25
    assert lb.apply_sync(testudo.require(squared_by_require=lambda a: -a)(bar), 5) == -5
    # Called here, @require imports into the function's own globals.
    namespace = {}
    exec("def local_hsv(x):\n    return colorsys.rgb_to_hsv(x, x, x)[2]\n", namespace)
    assert "colorsys" not in namespace
    assert testudo.require("colorsys")(namespace["local_hsv"])(0.25) == 0.25
    assert namespace["colorsys"].__name__ == "colorsys"
    with pytest.raises(TypeError):
        testudo.require(5)

    @testudo.require("testudo_no_such_module")
    @testudo.interactive
    def never(x):
        return x

    with pytest.raises(error.ImpossibleDependency):
        lb.apply_sync(never, 1)


def test_dependency_sets():
    succeeded, failed = {str(i) for i in range(0, 20, 2)}, {str(i) for i in range(1, 20, 2)}
    mixed = [str(i) for i in range(6)]
    dep = testudo.Dependency(mixed, success=True, failure=False)
    assert not dep.check(succeeded, failed) and dep.unreachable(succeeded, failed)
    dep.all = False
    assert dep.check(succeeded, failed) and not dep.unreachable(succeeded, failed)
    dep = testudo.Dependency(mixed, success=False, failure=True)
    assert not dep.check(succeeded, failed) and dep.unreachable(succeeded, failed)
    dep = testudo.Dependency(dep.as_dict())
    assert dep == set(mixed) and (dep.success, dep.failure, dep.all) == (False, True, True)
    with pytest.raises(ValueError):
        testudo.Dependency(mixed, success=False, failure=False)
    with pytest.raises(TypeError):
        testudo.Dependency([1.5])


def test_dependency_as_after(rc):
    lb = rc.load_balanced_view()
    first = lb.apply_async(time.sleep, 0.3)
    with lb.temp_flags(after=testudo.Dependency([first])):
        then = lb.apply_async(time.time)
    then.get(timeout=10)
    assert rc.metadata[then.msg_ids[0]]["started"] >= rc.metadata[first.msg_ids[0]]["completed"]


# ----- joblib -----

@testudo.interactive
def pid_and_square(x):
    import os
    return os.getpid(), x * x


def test_joblib_backend_of_a_view(rc):
    joblib = pytest.importorskip("joblib")
    view = rc.load_balanced_view()
    view.register_joblib_backend(name="testudo-view")
    engine_pids = set(rc[:].apply_sync(engine_pid))
    with joblib.parallel_backend("testudo-view"):
        out = joblib.Parallel()(joblib.delayed(pid_and_square)(i) for i in range(40))
    assert [sq for _, sq in out] == [i * i for i in range(40)]
    pids = {pid for pid, _ in out}
    assert pids <= engine_pids and len(pids) > 1  # spread over the engines
    with pytest.raises(error.RemoteError) as info:
        joblib.Parallel(backend="testudo-view")(joblib.delayed(lambda x: 1 / x)(i) for i in range(3))
    assert info.value.ename == "ZeroDivisionError"


def test_joblib_backend_of_the_default_cluster():
    joblib = pytest.importorskip("joblib")
    from conftest import Cluster
    default = Cluster(2, profile="default")
    try:
        testudo.register_joblib_backend()
        out = joblib.Parallel(backend="testudo")(joblib.delayed(pid_and_square)(i) for i in range(10))
        assert [sq for _, sq in out] == [i * i for i in range(10)]
        assert {pid for pid, _ in out} <= set(default.engine_pids)
    finally:
        default.stop()


# ----- dask -----

def test_become_dask(rc):
    pytest.importorskip("distributed")
    import dask
    dask_client = rc.become_dask(targets=[rc.ids[0], rc.ids[1]])
    try:
        assert dask_client.scheduler.address.startswith("tls://127.0.0.1:")  # TLS, loopback
        workers = dask_client.scheduler_info()["workers"]
        assert len(workers) == 2 and {w["nthreads"] for w in workers.values()} == {1}
        engine_pids = set(rc[[0, 1]].apply_sync(engine_pid))
        assert set(dask_client.run(os.getpid).values()) == engine_pids  # the workers are the engines
        total = dask.delayed(sum)([dask.delayed(lambda x: x * x)(i) for i in range(10)])
        assert dask_client.compute(total).result(timeout=30) == 285
        assert dask_client.submit(os.getpid).result(timeout=30) in engine_pids
        assert rc[0].apply_sync(testudo.interactive(lambda: type(dask_worker).__name__)) == "Worker"
    finally:
        dask_client.close()
        rc.stop_dask()
    assert rc[:].apply_sync(testudo.interactive(lambda: "dask_worker" in globals())) == [False] * 4
    assert rc._dask is None


# ----- wait_interactive's progress bar -----

@testudo.interactive
def sleep_then(seconds, value):
    import time
    time.sleep(seconds)
    return value


def test_wait_interactive_text_bar(rc, capsys):
    ar = rc.load_balanced_view().map_async(sleep_then, [0.1] * 8, range(8))
    ar.wait_interactive(interval=0.02)
    captured = capsys.readouterr()
    frames = captured.err.split("\r")[1:]
    assert frames[0].startswith("sleep_then: |--------------------|   0%    0/8 tasks finished")
    assert frames[-1].startswith("sleep_then: |####################| 100%    8/8 tasks finished")
    assert frames[-1].endswith("\ndone\n")
    shown = [int(f.split("%")[1].split("/")[0]) for f in frames]
    assert shown == sorted(shown) and len(set(shown)) > 2  # in place, as tasks finish
    assert captured.out == ""


def test_client_and_view_wait_interactive(rc, capsys):
    view = rc.load_balanced_view()
    ars = [view.apply_async(sleep_then, 0.1 * i, i) for i in range(4)]
    assert view.wait_interactive(interval=0.02) is True
    assert all(ar.ready() for ar in ars) and view.outstanding == set()
    err = capsys.readouterr().err
    assert "   4/4 tasks finished" in err and err.endswith("done\n")
    slow = rc[0].apply_async(sleep_then, 1.0, 0)
    assert rc.wait_interactive([slow], interval=0.02, timeout=0.1) is False
    assert "0/1 tasks finished" in capsys.readouterr().err
    assert rc.wait_interactive(interval=0.02) is True and slow.ready()


def test_wait_interactive_widget(rc, monkeypatch):
    pytest.importorskip("ipywidgets")
    import IPython.display
    from testudo import _progress
    shown = []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    monkeypatch.setattr(_progress, "_in_kernel", lambda: True)  # as in a Jupyter kernel
    # In a kernel the widget is the default only with ipywidgets 7+ (Debian 12's 6.0 breaks
    # headless nbconvert runs); widget=True asks for it whatever the version.
    import ipywidgets
    auto = _progress.progress(4, "t")
    assert isinstance(auto, _progress.WidgetProgress) == (int(ipywidgets.__version__.split(".")[0]) >= 7)
    shown.clear()
    ar = rc[:].apply_async(sleep_then, 0.2, 1)
    ar.wait_interactive(interval=0.02, widget=True)
    (box,) = shown
    bar, label = box.children
    assert (bar.value, bar.max, bar.bar_style) == (4, 4, "success")
    assert "4/4 tasks finished" in label.value
    shown.clear()
    ar = rc[0].apply_async(sleep_then, 1.0, 1)
    ar.wait_interactive(interval=0.02, timeout=0.1, widget=True)
    assert shown[0].children[0].value == 0 and shown[0].children[0].bar_style == "warning"
    ar.get(timeout=10)
