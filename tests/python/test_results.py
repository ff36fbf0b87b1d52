"""Results that survive (docs/threat-model.md F2, F3, T10): the controller's task store,
fetched by msg_id from any connection or process of the same user, and only by that user."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

import testudo
from conftest import TESTUDO_BIN, kill_processes, pid_gone, wait_until


def test_client_disconnects_with_1000_tasks_in_flight_and_fetches_them_later(own_cluster):
    c = own_cluster(4)
    rc = c.client()
    rc.wait_for_engines(4, timeout=30)
    rc[:].execute("import time", block=True)
    lview = rc.load_balanced_view()
    ars = [lview.apply_async(lambda i: time.sleep(0.002) or i * i, i) for i in range(1000)]
    msg_ids = [ar.msg_ids[0] for ar in ars]
    rc.close()  # most tasks are still queued or running

    later = c.client()  # a new connection: same user, same identity
    values = later.get_result(msg_ids).get(timeout=120)
    assert values == [i * i for i in range(1000)]
    status = later.result_status(msg_ids)
    assert status["pending"] == [] and sorted(status["completed"], key=int) == sorted(msg_ids, key=int)
    later.close()


def test_results_of_a_killed_controller_survive_its_restart(own_cluster):
    c = own_cluster(2, extra=("--reuse",))
    rc = c.client()
    rc.wait_for_engines(2, timeout=30)
    finished = rc[:].apply_async(lambda: "done before the crash")
    assert finished.get(timeout=30) == ["done before the crash"] * 2
    running = rc[0].execute("import time; time.sleep(60)", block=False)
    ids = finished.msg_ids + running.msg_ids
    time.sleep(0.3)
    os.kill(c.controller_pid, signal.SIGKILL)
    with pytest.raises(testudo.RemoteError) as lost_now:
        running.get(timeout=10)
    assert lost_now.value.ename == "ConnectionError"

    log = open(c.path("log", "controller-restarted.log"), "w")
    restarted = subprocess.Popen([TESTUDO_BIN, "--profile", c.profile, "controller", "--reuse"], env=c.env,
                                 stdout=log, stderr=log, start_new_session=True)
    try:
        # The client and both engines come back by themselves.
        def back():
            try:
                return len(rc.ids) == 2
            except ConnectionError:
                return False
        assert wait_until(back, timeout=30)
        values = rc.get_result(ids).get(timeout=30, return_exceptions=True)
        assert values[:2] == ["done before the crash"] * 2
        assert isinstance(values[2], testudo.RemoteError) and values[2].ename == "TaskLost"
        assert isinstance(values[2], testudo.error.TaskLost) and values[2].outcome == testudo.Outcome.LOST
        assert "may or may not have run" in values[2].evalue
        assert rc.result_status(ids)["completed"] == ids
        assert rc.cluster_status()["tasks_lost_at_start"] == 1, "the restart says what it lost"
        assert rc[:].apply_sync(lambda: "new work") == ["new work"] * 2
        rc.close()
    finally:
        restarted.kill()
        restarted.wait()
        kill_processes(c)


def test_another_user_cannot_read_or_purge_my_results(cluster, rc):
    ar = rc[0].apply_async(lambda: "secret result")
    assert ar.get(timeout=30) == "secret result"
    mine = ar.msg_ids
    other_home = tempfile.mkdtemp(prefix="testudo-other-user-")
    saved = os.environ["TESTUDO_HOME"]
    try:
        # Another user: same cluster (a copy of the client connection file), another identity.
        os.environ["TESTUDO_HOME"] = other_home
        # A stranger is refused at the door (manual trust mode) ...
        with pytest.raises(PermissionError, match="not trusted"):
            testudo.Client(url_file=cluster.client_file)
        # ... until an administrator places its certificate in the trust directory.
        cert = pathlib.Path(other_home, "identity", "client-cert.pem").read_text()
        trusted = pathlib.Path(cluster.path("security", "trust", "client", "other-user.pem"))
        trusted.write_text(cert)
        deadline = time.monotonic() + 5
        while True:
            try:
                other = testudo.Client(url_file=cluster.client_file)
                break
            except PermissionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with pytest.raises(testudo.RemoteError) as denied:
            other.get_result(mine[0]).get(timeout=10)
        assert denied.value.ename == "KeyError" and "of yours" in denied.value.evalue
        assert isinstance(denied.value, KeyError) and denied.value.outcome == testudo.Outcome.NO_SUCH_TASK
        with pytest.raises(KeyError):
            other.result_status(mine)
        assert other.db_query({"msg_id": {"$in": mine}}) == []
        assert other.purge_results(mine) == 0
        other.close()
    finally:
        os.environ["TESTUDO_HOME"] = saved
        shutil.rmtree(other_home, ignore_errors=True)
    # Still there for its owner.
    assert rc.get_result(mine[0], block=True).get() == "secret result"


def test_db_query_and_purge(rc):
    ok = rc.load_balanced_view().apply_async(lambda: 7)
    bad = rc.load_balanced_view().apply_async(lambda: 1 / 0)
    assert ok.get(timeout=30) == 7
    with pytest.raises(testudo.RemoteError):
        bad.get(timeout=30)
    ids = ok.msg_ids + bad.msg_ids
    records = {r["msg_id"]: r for r in rc.db_query({"msg_id": {"$in": ids}})}
    assert records[ok.msg_ids[0]]["state"] == "succeeded"
    assert records[bad.msg_ids[0]]["state"] == "failed"
    assert records[ok.msg_ids[0]]["kind"] == "apply"
    assert records[ok.msg_ids[0]]["engine_id"] in rc.ids
    assert records[ok.msg_ids[0]]["started"] <= records[ok.msg_ids[0]]["completed"]
    failed = [r["msg_id"] for r in rc.db_query({"state": "failed"}, keys=["msg_id"])]
    assert bad.msg_ids[0] in failed and ok.msg_ids[0] not in failed
    # A failed task's stored result is its remote error, as the first time.
    with pytest.raises(testudo.RemoteError) as again:
        rc.get_result(bad.msg_ids[0], block=True).get()
    assert again.value.ename == "ZeroDivisionError"

    assert rc.purge_results(ok.msg_ids) == 1
    with pytest.raises(KeyError):
        rc.result_status(ok.msg_ids)
    assert rc.purge_results("all") >= 1
    assert rc.db_query({"completed": {"$ne": None}}) == []


def test_db_query_operators(rc):
    import datetime
    view = rc.load_balanced_view()
    ars = [view.apply_async(lambda i: time.sleep(0.01) or i, i) for i in range(6)]
    assert [ar.get(timeout=30) for ar in ars] == list(range(6))
    bad = view.apply_async(lambda: 1 / 0)
    with pytest.raises(testudo.RemoteError):
        bad.get(timeout=30)
    ids = [ar.msg_ids[0] for ar in ars] + bad.msg_ids
    even, odd = ids[::2], ids[1::2]

    def found(query, **kw):
        return {r["msg_id"] for r in rc.db_query(query, **kw) if r["msg_id"] in ids}

    assert found({"msg_id": {"$in": even}}) == set(even)
    assert found({"msg_id": {"$nin": even}}) == set(odd)
    assert found({"msg_id": {"$ne": ""}}) == set(ids)
    assert found({"msg_id": {"$ne": ids[0]}}) == set(ids[1:])
    assert found({"msg_id": ids[3]}) == {ids[3]}
    assert found({"msg_id": {"$in": even, "$nin": [ids[0]]}}) == set(even[1:])
    assert found({"state": {"$ne": "succeeded"}}) == set(bad.msg_ids)
    assert found({"state": {"$nin": ["failed"]}}) == set(ids[:6])
    assert found({"state": {"$in": ["failed", "aborted"]}, "msg_id": {"$in": ids}}) == set(bad.msg_ids)
    # No state left: nothing, although the controller reads an empty list of states as any.
    assert found({"state": {"$in": ["succeeded"], "$nin": ["succeeded"]}}) == set()

    # Times: split the tasks at the middle one's submission, with datetimes (as records hold
    # them) and with seconds since 1970.
    middle = rc.db_query({"msg_id": ids[3]})[0]["submitted"]
    assert middle.tzinfo is datetime.timezone.utc
    before = found({"submitted": {"$lt": middle}})
    after = found({"submitted": {"$gte": middle}})
    assert before | after == set(ids) and not before & after
    assert ids[3] in after and ids[0] in before and ids[-1] in after
    assert found({"submitted": {"$gt": middle}}) == after - {ids[3]}
    assert found({"submitted": {"$lte": middle}}) == before | {ids[3]}
    assert found({"submitted": middle}) == {ids[3]}
    assert found({"submitted": {"$gte": middle.timestamp()}}) == after
    assert found({"submitted": {"$gte": middle.astimezone().replace(tzinfo=None)}}) == after  # naive: local
    assert found({"completed": {"$ne": None}, "started": {"$exists": True}}) == set(ids)
    assert found({"engine_id": {"$in": rc.ids}}) == set(ids)

    # keys: msg_id always there.
    for rec in rc.db_query({"msg_id": {"$in": ids}}, keys=["submitted", "completed"]):
        assert set(rec) == {"msg_id", "submitted", "completed"}
    assert rc.db_query({"msg_id": ids[0]}, keys="state") == [{"msg_id": ids[0], "state": "succeeded"}]

    # Unknown fields and operators are clear errors, never every record.
    with pytest.raises(ValueError, match="unknown operator '\\$le'.*\\$lte"):
        rc.db_query({"submitted": {"$le": middle}})
    with pytest.raises(ValueError, match="unknown operator '\\$regex'"):
        rc.db_query({"msg_id": {"$regex": "1"}})
    with pytest.raises(ValueError, match="unknown field 'client_uuid'"):
        rc.db_query({"client_uuid": "x"})
    with pytest.raises(ValueError, match="unknown state 'done'"):
        rc.db_query({"state": {"$ne": "done"}})
    with pytest.raises(ValueError, match="unknown key 'buffers'"):
        rc.db_query({}, keys=["buffers"])
    with pytest.raises(TypeError):
        rc.db_query({"msg_id": {"$in": 5}})


def test_db_query_pages_through_every_record(rc, monkeypatch):
    import testudo._storedresults as stored_module
    monkeypatch.setattr(stored_module, "_DB_PAGE", 3)
    ars = [rc[0].apply_async(abs, -i) for i in range(8)]
    ids = [ar.msg_ids[0] for ar in ars]
    for ar in ars:
        ar.get(timeout=30)
    assert {r["msg_id"] for r in rc.db_query({"kind": "apply"})} >= set(ids)


def test_controller_refuses_unknown_filter_keys(rc):
    # The client evaluates what the controller cannot narrow; the controller still refuses a
    # filter it does not know rather than answer with every record.
    with pytest.raises(ValueError, match="unknown key 'owner'"):
        rc._native.db_query(json.dumps({"owner": "x"}))


def test_get_result_of_a_running_task_answers_when_it_ends(cluster, rc):
    rc[:].execute("import time", block=True)
    ar = rc[1].apply_async(lambda: time.sleep(1) or "late")
    ids = ar.msg_ids
    second = cluster.client()
    fetched = second.get_result(ids)
    assert not fetched.ready()
    assert fetched.get(timeout=30) == ["late"]
    second.close()


def test_bad_task_ids_are_clear_errors(rc):
    for bad in (-1, "-5", 2**64, "abc"):
        with pytest.raises(ValueError, match="not a testudo msg_id"):
            rc.get_result(bad)
        with pytest.raises(ValueError, match="not a testudo msg_id"):
            rc.result_status([bad])


def test_security_and_identity_directories_open_to_others_are_refused(own_cluster):
    c = own_cluster(1)
    for directory in (c.path("security"), os.path.join(c.home, "identity")):
        os.chmod(directory, 0o755)
        try:
            refused = c.run("status", check=False)
            assert refused.returncode == 1, refused.stdout
            assert f"directory {directory} has mode 0755" in refused.stderr and "chmod 700" in refused.stderr, \
                refused.stderr
            with pytest.raises(PermissionError, match="chmod 700"):
                c.client()
        finally:
            os.chmod(directory, 0o700)
    assert "1 engine(s)" in c.run("status").stdout
