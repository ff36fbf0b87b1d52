"""ipyparallel 7.1 API, round four: what ipyparallel's own tests found still different
(bench/ipp_suite/run), and Dependency(all=False / success / failure) in after/follow. Our own
tests against a real cluster; the behaviour compared is ipyparallel's (client/*.py,
controller/dependency.py)."""

import os
import subprocess
from unittest import mock

import pytest
from conftest import TESTUDO_BIN, wait_until

import testudo
from testudo import error


@testudo.interactive
def sleep_then(seconds, value):
    import time
    time.sleep(seconds)
    return value


@testudo.interactive
def fail_after(seconds):
    import time
    time.sleep(seconds)
    raise ValueError("failed on purpose")


@testudo.interactive
def read_a():
    return a  # noqa: F821 (the engine's `a`)


# ----- results -----

def test_get_result_is_always_an_async_result(rc):
    ar = rc[0].execute("1/0", block=False)
    hr = rc.get_result(ar.msg_ids[0], block=True)  # waits, and still hands back the AsyncResult
    assert isinstance(hr, testudo.AsyncResult) and hr.ready()
    with pytest.raises(error.RemoteError) as raised:
        hr.get()
    assert raised.value.ename == "ZeroDivisionError"
    # Named by what the request did, not by the fetch; IPython's header line starts the traceback.
    lines = raised.value.render_traceback()
    assert lines[0].startswith("---") and lines[1].split() == ["ZeroDivisionError", "Traceback", "(most", "recent",
                                                                 "call", "last)"]
    composite = rc.get_result([ar.msg_ids[0], ar.msg_ids[0]], block=False)
    with pytest.raises(error.CompositeError) as raised:
        composite.get(timeout=10)
    assert "[0:execute]" in "\n".join(raised.value.render_traceback())


def test_map_return_exceptions(rc):
    def fail_on_2(n):
        if n == 2:
            raise ValueError("two")
        return n

    lb = rc.load_balanced_view().map(fail_on_2, range(4), return_exceptions=True, block=False)
    values = lb.get(timeout=10)
    assert values[:2] == [0, 1] and values[3] == 3 and isinstance(values[2], error.RemoteError)
    assert list(lb)[2] is values[2]
    with pytest.raises(error.RemoteError):
        lb.get(return_exceptions=False)
    # A DirectView's map: the failed engine's block is its RemoteError.
    dv = rc[:2].map(fail_on_2, range(4), return_exceptions=True, block=True)
    assert dv[0:2] == [0, 1] and isinstance(dv[2], error.RemoteError)


def test_pending_single_result_and_wait_for_output(rc):
    ar = rc[1].apply_async(sleep_then, 0.3, 5)
    assert isinstance(ar.metadata, dict) and ar.data == {}  # one engine: one dict, before it is done too
    assert ar["status"] == "pending"
    assert ar.wait_for_output(10) is True
    assert ar.get() == 5 and ar.stdout == ""


def test_imap_submits_max_outstanding_before_the_first_result(rc):
    view = rc.load_balanced_view()
    gen = view.imap(sleep_then, [0.05] * 10, range(10), max_outstanding=3)
    assert next(gen) == 0
    assert len(view.history) == 3
    assert list(gen) == list(range(1, 10))


def test_db_query_header(rc):
    ar = rc.load_balanced_view().apply_async(sleep_then, 0, 1)
    ar.get(timeout=10)
    again = rc.resubmit(ar.msg_ids)
    again.get(timeout=10)
    records = rc.db_query({"msg_id": {"$in": ar.msg_ids + again.msg_ids}}, keys="header")
    first, second = sorted((r["header"] for r in records), key=lambda h: int(h["msg_id"]))
    assert first["msg_type"] == second["msg_type"] == "apply_request"
    assert first["msg_id"] == ar.msg_ids[0] and second["msg_id"] == again.msg_ids[0]
    assert first["date"] < second["date"]


# ----- namespaces -----

def test_apply_a_reference_push_and_pull_attributes(rc):
    view = rc[2]
    view.block = True
    view.execute("class A: pass\na = A()\na.b = 128\nitems = [1, 2, 3]\ndef f(x): return a.b * x")
    assert view.apply_sync(testudo.Reference("f"), 2) == 256  # the engine's own function
    assert view["a.b"] == 128 and view.pull("items[-1]") == 3
    view["a.b"] = 0
    view["items[0]"] = 10
    assert view.pull(["a.b", "items"]) == [0, [10, 2, 3]]
    # Attributes and literal items only: a pull never evaluates code.
    for name in ("f(1)", "items[len(items) - 1]", "a.b + 1"):
        with pytest.raises(error.RemoteError) as raised:
            view.pull(name)
        assert raised.value.ename == "NameError"
    with pytest.raises(error.RemoteError):
        view.push({"f(1)": 2})
    # A pushed __main__ function sees the engine's namespace, as ipyparallel's @interactive.
    view["g"] = read_a
    view.execute("a = 5")
    view.execute("b = g()")
    assert view["b"] == 5


# ----- dependencies -----

def test_after_any_one_and_counting_failures(rc):
    view = rc.load_balanced_view()
    slow = view.apply_async(sleep_then, 1.0, "slow")
    fast = view.apply_async(sleep_then, 0.1, "fast")
    failed = view.apply_async(fail_after, 0.1)
    with view.temp_flags(after=testudo.Dependency([slow, fast], all=False)):
        any_one = view.apply_async(sleep_then, 0, "any")
    with view.temp_flags(after=testudo.Dependency([failed], failure=True)):
        either = view.apply_async(lambda: "ran")
    with view.temp_flags(after=testudo.Dependency([fast], success=False, failure=True)):
        only_on_failure = view.apply_async(lambda: "ran")
    assert either.get(timeout=10) == "ran"
    with pytest.raises(error.ImpossibleDependency):
        only_on_failure.get(timeout=10)
    assert any_one.get(timeout=10) == "any" and slow.get(timeout=10) == "slow"
    assert fast.completed <= any_one.started < slow.completed  # after the fast one, not the slow one


def test_follow_any_runs_where_one_of_them_ran(rc):
    view = rc.load_balanced_view()
    first = rc[1].apply_async(sleep_then, 0, 1)
    second = rc[3].apply_async(sleep_then, 0, 2)
    first.get(timeout=10), second.get(timeout=10)
    with view.temp_flags(follow=testudo.Dependency([first, second], all=False)):
        ars = [view.apply_async(sleep_then, 0.05, i) for i in range(6)]
    assert [ar.get(timeout=10) for ar in ars] == list(range(6))
    assert {ar.engine_id for ar in ars} <= {1, 3}
    with view.temp_flags(follow=[first, second]):  # every one: they ran on different engines
        with pytest.raises(error.ImpossibleDependency):
            view.apply_sync(lambda: 1)


# ----- ipyparallel's names and IPython -----

def test_joblib_backend_is_registered_as_ipyparallel_too(rc):
    joblib = pytest.importorskip("joblib")
    view = rc.load_balanced_view()
    view.register_joblib_backend()
    with mock.patch.object(testudo.Client, "__new__", lambda *a, **kw: rc):  # as ipyparallel's test does
        assert testudo.Client.__new__(testudo.Client) is rc
    other = testudo.Client(profile=rc.profile)  # __new__ came back cleanly
    assert other is not rc
    other.close()
    for name in ("ipyparallel", "testudo"):
        assert joblib.Parallel(backend=name)(joblib.delayed(abs)(-i) for i in range(4)) == [0, 1, 2, 3]


def test_a_client_made_in_ipython_registers_px_and_remote_function_docs(cluster, rc):
    from IPython.core.interactiveshell import InteractiveShell
    ip = InteractiveShell.instance()
    try:
        assert "px" not in ip.magics_manager.magics["line"]
        client = cluster.client()
        assert "px" in ip.magics_manager.magics["line"] and "px" in ip.magics_manager.magics["cell"]
        client.close()
    finally:
        InteractiveShell.clear_instance()

    @testudo.remote(rc[0], block=True)
    def double(x):
        """Twice x."""
        return 2 * x

    assert double.__name__ == "double" and double.__doc__ == "RemoteFunction wrapping:\nTwice x."
    assert double(4) == 8


def test_the_default_profile_comes_from_testudo_profile(cluster, monkeypatch):
    # What %load_ext testudo (a Client() with no arguments) connects to; the CLI's --profile too.
    monkeypatch.setenv("TESTUDO_PROFILE", cluster.profile)
    client = testudo.Client()
    try:
        assert client.profile == cluster.profile and len(client.ids) == 4
    finally:
        client.close()
    status = subprocess.run([TESTUDO_BIN, "status"], env=dict(os.environ), capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    monkeypatch.delenv("TESTUDO_PROFILE")
    status = subprocess.run([TESTUDO_BIN, "status"], env=dict(os.environ), capture_output=True, text=True, timeout=60)
    assert status.returncode != 0  # no cluster of the 'default' profile in this TESTUDO_HOME


def test_abort_reaches_a_direct_task_already_sent_to_its_engine(rc, tmp_path):
    view = rc[3]
    started = tmp_path / "started"
    running = view.execute(f"open({str(started)!r}, 'w').close()\nimport time; time.sleep(0.5); ran_first = True",
                           block=False)
    queued = view.execute("ran_second = True", block=False)  # sent ahead: waits on the engine
    assert wait_until(started.exists)
    queued.abort()
    running.abort()  # running already: it goes on
    with pytest.raises(error.TaskAborted):
        queued.get(timeout=10)
    running.get(timeout=10)
    assert view.pull("ran_first", block=True) is True
    with pytest.raises(error.RemoteError) as raised:
        view.pull("ran_second", block=True)
    assert raised.value.ename == "NameError"  # it never ran
    assert rc.db_query({"msg_id": queued.msg_ids[0]}, keys=["state"])[0]["state"] == "aborted"
    with pytest.raises(error.TaskAborted):
        rc.get_result(queued.msg_ids[0]).get(timeout=10)  # as the controller recorded it


def test_ipython_syntax_runs_on_the_engines(rc):
    pytest.importorskip("IPython")
    view = rc[2]
    view.execute("answer = 42", block=True)
    whos = view.execute("%whos", block=True).stdout
    assert whos.splitlines()[0].split() == ["Variable", "Type", "Data/Info"]
    assert ["answer", "int", "42"] in [line.split() for line in whos.splitlines()]
    assert view.execute("!echo from a shell", block=True).stdout.strip() == "from a shell"
    reply = view.execute("files = !echo listed\nfiles[0]", silent=False, block=True)
    assert reply.execute_result["data"]["text/plain"] == "'listed'"
    with pytest.raises(error.RemoteError) as raised:
        view.execute("1 +", block=True)  # plain Python's error, not IPython's translation's
    assert raised.value.ename == "SyntaxError"
    view.execute("del answer, files", block=True)
