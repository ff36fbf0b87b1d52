"""Every request outcome (testudo.Outcome) reaches Python as the exception docs/tasks.md
documents for it: the whole table through the binding (encoded, decoded and read as the
client reads a controller's reply), and for real every outcome that a cluster produces
cheaply. A local get() timeout is TimeoutError, never an outcome."""

import json
import os
import pathlib
import pickle
import re
import shutil
import signal
import tempfile
import time

import pytest

import testudo
from testudo import AsyncResult, Outcome, _testudo, error
from conftest import ROOT, kill_processes, wait_until

EVERY = [o for name, o in Outcome.__members__.items()]
FAILURES = [o for o in EVERY if o != Outcome.OK]


def assert_outcome(exc, outcome):
    """`exc` is what `outcome` documents: an instance of its exception, and (as ipyparallel
    delivers errors) a RemoteError whose ename names it."""
    documented = error.OUTCOME_EXCEPTIONS[outcome]
    assert isinstance(exc, documented), (outcome, type(exc).__mro__)
    assert isinstance(exc, testudo.RemoteError)
    assert exc.outcome == outcome
    if outcome != Outcome.PYTHON_ERROR:
        assert exc.ename == documented.__name__


def single(rc, native, fname="apply", kind="pickle"):
    return AsyncResult(rc, [native], fname, kind, single=True)


# ----- the table, for every value -----


def test_every_outcome_has_a_documented_exception():
    assert [int(o) for o in EVERY] == list(range(len(EVERY))), "numbered 0..n-1 in order, as on the wire"
    assert set(error.OUTCOME_EXCEPTIONS) == set(FAILURES)
    # The documentation has the same table.
    doc = (ROOT / "docs" / "tasks.md").read_text()
    for name, o in Outcome.__members__.items():
        row = re.search(r"^\| `" + name.lower() + r"` \| ([^|]*)\|", doc, re.M)
        assert row, f"docs/tasks.md has no row for {name.lower()}"
        if o != Outcome.OK:
            assert row.group(1).strip() == f"`{error.OUTCOME_EXCEPTIONS[o].__name__}`", name


# ipyparallel 7.1's task-lifecycle errors and their bases (ipyparallel/error.py): `except`
# clauses written for ipyparallel must catch what testudo raises.
IPYPARALLEL_BASES = {
    "TaskAborted": ["KernelError"],
    "TaskTimeout": ["KernelError"],
    "UnmetDependency": ["KernelError"],
    "ImpossibleDependency": ["UnmetDependency"],
    "DependencyTimeout": ["ImpossibleDependency"],
    "InvalidDependency": ["ImpossibleDependency"],
    "TaskRejectError": ["KernelError"],
    "RemoteError": ["KernelError"],
    "CompositeError": ["RemoteError"],
    "EngineError": ["KernelError"],
    "NoEnginesRegistered": ["KernelError"],
}


@pytest.mark.parametrize("name", sorted(IPYPARALLEL_BASES))
def test_ipyparallel_error_classes_keep_their_bases(name):
    cls = getattr(error, name)
    assert name in error.__all__
    for base in IPYPARALLEL_BASES[name]:
        assert issubclass(cls, getattr(error, base)), (name, base)
    assert issubclass(cls, Exception)


def test_a_dependency_timeout_is_also_ipyparallels_task_timeout():
    # ipyparallel raises TaskTimeout when a task's timeout passes before it runs.
    exc = error.outcome_error(Outcome.DEPENDENCY_TIMEOUT, "timed out", {"engine_id": None})
    assert isinstance(exc, error.TaskTimeout) and isinstance(exc, error.DependencyTimeout)
    assert isinstance(exc, error.ImpossibleDependency) and not isinstance(exc, TimeoutError)


def test_an_unknown_dependency_is_an_invalid_dependency():
    # The controller's words for it (src/controller/scheduler.cc): ipyparallel's InvalidDependency.
    exc = error.outcome_error(Outcome.DEPENDENCY_FAILED, "unknown dependency 12345", {})
    assert type(exc).__name__ == exc.ename == "InvalidDependency"
    assert isinstance(exc, error.InvalidDependency) and isinstance(exc, error.RemoteError)
    failed = error.outcome_error(Outcome.DEPENDENCY_FAILED, "dependency 12 failed", {})
    assert failed.ename == "ImpossibleDependency" and not isinstance(failed, error.InvalidDependency)


@pytest.mark.parametrize("outcome", FAILURES, ids=lambda o: o.name)
def test_every_outcome_reaches_python_through_the_binding(outcome):
    reply = _testudo._reply_for_test(int(outcome), "the reason", 3, "ZeroDivisionError", "division by zero")
    assert reply.outcome == outcome
    assert not reply.ok
    exc = error.outcome_error(reply.outcome, reply.message, {"engine_id": 3, "method": "apply"}, reply)
    assert_outcome(exc, outcome)
    assert exc.engine_info["engine_id"] == 3
    if outcome == Outcome.PYTHON_ERROR:
        assert (exc.ename, exc.evalue) == ("ZeroDivisionError", "division by zero")
        assert "ZeroDivisionError" in exc.traceback
    else:
        assert exc.evalue == "the reason"
    # Several engines: gathered into one CompositeError, each keeping its name.
    with pytest.raises(testudo.CompositeError) as info:
        error.collect_exceptions([1, exc, exc], "apply")
    assert [e[0] for e in info.value.elist] == [exc.ename] * 2


@pytest.mark.parametrize("outcome", FAILURES, ids=lambda o: o.name)
def test_a_failed_call_raises_the_same_exception(outcome):
    # Control calls (engine list, db_query, purge, abort...) fail with an outcome too.
    with pytest.raises(error.OUTCOME_EXCEPTIONS[outcome]) as info:
        _testudo._raise_control_failure_for_test(outcome, "refused for a reason")
    assert info.value.outcome == outcome
    assert "refused for a reason" in str(info.value)


def test_unknown_outcome_numbers_are_malformed_never_guessed():
    for number in (len(EVERY), 200, 0xFFFF):
        with pytest.raises(ValueError, match="unknown outcome"):
            _testudo._reply_for_test(number)
    ok = _testudo._reply_for_test(int(Outcome.OK))
    assert ok.ok and ok.outcome == Outcome.OK


def test_a_dependency_timeout_is_not_a_local_timeout():
    assert not issubclass(error.DependencyTimeout, TimeoutError)
    assert issubclass(error.DependencyTimeout, error.ImpossibleDependency)
    assert error.TimeoutError is TimeoutError


# ----- for real, on a shared cluster -----


@pytest.fixture
def lview(rc):
    return rc.load_balanced_view()


def test_python_error(rc):
    with pytest.raises(testudo.RemoteError) as info:
        rc[0].apply_sync(lambda: 1 / 0)
    assert_outcome(info.value, Outcome.PYTHON_ERROR)
    assert info.value.ename == "ZeroDivisionError"


def test_local_get_timeout_is_timeout_error_and_the_task_goes_on(rc, lview):
    ar = lview.apply_async(time.sleep, 1.0)
    with pytest.raises(TimeoutError) as info:
        ar.get(timeout=0.05)
    assert not isinstance(info.value, (error.DependencyTimeout, testudo.RemoteError))
    assert ar.get(timeout=10) is None


def test_no_such_engine(rc):
    ar = single(rc, rc._native.execute([77], "x = 1", False), "execute", "none")
    with pytest.raises(IndexError) as info:
        ar.get(timeout=10)
    assert_outcome(info.value, Outcome.NO_SUCH_ENGINE)
    assert "77" in info.value.evalue


def test_no_such_task(rc):
    with pytest.raises(KeyError) as info:
        rc.get_result("987654321", block=True).get()
    assert_outcome(info.value, Outcome.NO_SUCH_TASK)


def test_too_large_is_refused_before_sending_and_the_connection_stays(rc):
    buffers = [pickle.PickleBuffer(bytearray(8)) for _ in range(5000)]  # 5,001 segments > 4,096
    ar = rc[0].apply_async(len, buffers)
    with pytest.raises(error.MessageTooLarge) as info:
        ar.get(timeout=10)
    assert_outcome(info.value, Outcome.TOO_LARGE)
    assert isinstance(info.value, ValueError)
    assert rc[0].apply_sync(len, buffers[:10]) == 10


def test_aborted(lview):
    # A task waiting for its dependency is in the controller, where abort reaches it.
    slow = lview.apply_async(time.sleep, 1.0)
    with lview.temp_flags(after=slow):
        waiting = lview.apply_async(str, "never")
    assert waiting.abort() == 1
    with pytest.raises(error.TaskAborted) as info:
        waiting.get(timeout=10)
    assert_outcome(info.value, Outcome.ABORTED)
    assert slow.get(timeout=10) is None


def test_dependency_failed_unreachable_and_timeout(rc, lview):
    failed = lview.apply_async(lambda: 1 / 0)
    with lview.temp_flags(after=failed):
        impossible = lview.apply_async(str, "never")
    with pytest.raises(error.ImpossibleDependency) as info:
        impossible.get(timeout=10)
    assert_outcome(info.value, Outcome.DEPENDENCY_FAILED)

    where = lview.apply_async(os.getpid)
    where.get(timeout=10)
    elsewhere = [e for e in rc.ids if e != where.metadata["engine_id"]]
    with lview.temp_flags(follow=where, targets=elsewhere):
        unreachable = lview.apply_async(str, "never")
    with pytest.raises(error.ImpossibleDependency) as info:
        unreachable.get(timeout=10)
    assert_outcome(info.value, Outcome.UNREACHABLE)

    slow = lview.apply_async(time.sleep, 1.5)
    with lview.temp_flags(after=slow, timeout=0.3):
        late = lview.apply_async(str, "never")
    with pytest.raises(error.DependencyTimeout) as info:
        late.get(timeout=10)
    assert_outcome(info.value, Outcome.DEPENDENCY_TIMEOUT)
    assert not isinstance(info.value, TimeoutError)
    assert slow.get(timeout=10) is None


def test_task_reject_error_raised_by_user_code(rc):
    @testudo.interactive
    def reject():
        from testudo.error import TaskRejectError
        raise TaskRejectError("not here")
    with pytest.raises(testudo.RemoteError) as info:
        rc[0].apply_sync(reject)
    assert info.value.ename == "TaskRejectError" and info.value.evalue == "not here"


# ----- for real, on clusters a test may damage -----


def test_engine_died_then_connection_lost(own_cluster):
    c = own_cluster(2)
    try:
        with c.client() as client:
            client.wait_for_engines(2, timeout=30)
            pids = client[:].apply_sync(os.getpid)
            dies = client[0].execute("import time; time.sleep(30)")
            stays = client[1].execute("import time; time.sleep(30)")
            time.sleep(0.3)
            os.kill(pids[0], signal.SIGKILL)
            with pytest.raises(error.EngineError) as info:
                dies.get(timeout=20)
            assert_outcome(info.value, Outcome.ENGINE_DIED)
            os.kill(c.controller_pid, signal.SIGKILL)
            with pytest.raises(ConnectionError) as info:
                stays.get(timeout=20)
            assert_outcome(info.value, Outcome.CONNECTION_LOST)
            # A call without a connection fails with the same outcome.
            with pytest.raises(ConnectionError) as info:
                client.ids
            assert info.value.outcome == Outcome.CONNECTION_LOST
    finally:
        kill_processes(c)


def test_refused_by_policy(own_cluster):
    policy_dir = tempfile.mkdtemp(prefix="testudo-policy-")
    policy = pathlib.Path(policy_dir, "policy.json")
    # Everyone but the owner may only look at the cluster.
    policy.write_text(json.dumps({"version": 1, "rules": [{"identities": ["*"], "allow": ["status"]}]}))
    os.chmod(policy, 0o600)
    c = own_cluster(2, extra=("--trust", "learn", "--auto-accept", "--policy", str(policy)))
    other_home = tempfile.mkdtemp(prefix="testudo-other-user-")
    saved = os.environ["TESTUDO_HOME"]
    try:
        os.environ["TESTUDO_HOME"] = other_home
        other = testudo.Client(url_file=c.client_file)
        other.wait_for_engines(2, timeout=30)
        with pytest.raises(testudo.CompositeError) as info:
            other[:].apply_sync(os.getpid)
        assert [e[0] for e in info.value.elist] == ["PermissionError", "PermissionError"]
        with pytest.raises(PermissionError) as info:
            other[0].apply_sync(os.getpid)
        assert_outcome(info.value, Outcome.NOT_ALLOWED)
        # A control call the policy refuses raises the same.
        with pytest.raises(PermissionError) as info:
            other.interrupt([0])
        assert info.value.outcome == Outcome.NOT_ALLOWED
        other.close()
    finally:
        os.environ["TESTUDO_HOME"] = saved
        shutil.rmtree(other_home, ignore_errors=True)
        shutil.rmtree(policy_dir, ignore_errors=True)
        kill_processes(c)
