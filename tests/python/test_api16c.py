"""ipyparallel 7.1 API, round three: metadata times as datetimes (AsyncResult, rc.metadata,
db_query), ar.timedelta, ar.data, queue_status(verbose=True). Our own tests against a real
cluster; the behaviour compared is ipyparallel's (client/asyncresult.py, client/client.py,
tests/test_asyncresult.py, test_db.py)."""

import datetime
import time

import pytest

import testudo

UTC = datetime.timezone.utc
TIMES = ("submitted", "started", "completed", "received")


@testudo.interactive
def sleep_then(seconds, value):
    import time
    time.sleep(seconds)
    return value


def is_utc(t):
    return isinstance(t, datetime.datetime) and t.tzinfo is UTC


# ----- metadata times -----

def test_metadata_times_are_utc_datetimes_and_durations_floats(rc):
    before = datetime.datetime.now(UTC)
    ar = rc[:].apply_async(sleep_then, 0.2, "x")
    assert all(is_utc(t) for t in ar.submitted)  # attribute access, before it is done too
    assert ar.started == [None] * 4 and ar["received"] == [None] * 4
    assert isinstance(ar.elapsed, float)
    ar.get(timeout=10)
    for m in ar.metadata:
        assert all(is_utc(m[key]) for key in TIMES)
        assert before - datetime.timedelta(seconds=0.05) <= m.submitted <= m.received
        assert m.started <= m.completed <= m.received
        assert m["data"] == {}
    assert [is_utc(t) for t in ar.completed] == [True] * 4 and ar.status == ["ok"] * 4
    for value in (ar.wall_time, ar.serial_time, ar.elapsed):
        assert isinstance(value, float)
    # ipyparallel's helper: earliest of the first, latest of the second, in seconds.
    span = ar.timedelta(ar.submitted, ar.received)
    assert isinstance(span, float) and 0.2 <= span < 5
    assert ar.timedelta(ar.started, ar.completed, start_key=max, end_key=min) <= span
    one = ar.timedelta(ar.metadata[1].started, ar.metadata[1].completed)
    assert 0.2 <= one <= span
    assert ar.sent is True
    with pytest.raises(AttributeError):
        ar.no_such_metadata_key


def test_single_result_times_and_execute_reply(rc):
    ar = rc[1].apply_async(sleep_then, 0.1, 1)
    assert is_utc(ar.submitted) and ar.started is None
    ar.get(timeout=10)
    assert is_utc(ar.started) and ar.data == {}
    assert 0.1 <= ar.timedelta(ar.started, ar.completed) < ar.timedelta(ar.submitted, ar.received) + 1e-6
    reply = rc[2].execute("1 + 1", silent=False, block=True)
    assert all(is_utc(reply.metadata[key]) for key in TIMES)
    assert is_utc(reply.received)


def test_client_metadata_and_db_query_hold_datetimes(rc):
    start = datetime.datetime.now(UTC) - datetime.timedelta(seconds=1)
    ar = rc.load_balanced_view().apply_async(sleep_then, 0, "done")
    pending = rc[0].apply_async(sleep_then, 0.5, "later")
    md = rc.metadata[pending.msg_ids[0]]
    assert is_utc(md["submitted"]) and md["status"] == "pending" and md["completed"] is None
    assert ar.get(timeout=10) == "done"
    assert all(is_utc(rc.metadata[ar.msg_ids[0]][key]) for key in TIMES)
    records = rc.db_query({"msg_id": {"$in": ar.msg_ids}})
    assert all(is_utc(records[0][key]) for key in ("submitted", "started", "completed"))
    assert records[0]["started"] <= records[0]["completed"]
    # Queries take datetimes (and seconds since 1970), compared as times.
    newer = rc.db_query({"submitted": {"$gte": start}}, keys=["submitted"])
    assert ar.msg_ids[0] in [r["msg_id"] for r in newer]
    assert all(r["submitted"] >= start for r in newer)
    assert rc.db_query({"submitted": {"$gte": start.timestamp()}, "msg_id": ar.msg_ids[0]})
    assert rc.db_query({"completed": {"$lt": start}, "msg_id": ar.msg_ids[0]}) == []
    running = rc.db_query({"msg_id": {"$in": pending.msg_ids}}, keys=["completed"])
    assert running == [{"msg_id": pending.msg_ids[0], "completed": None}]
    assert pending.get(timeout=10) == "later"
    hub = rc.hub_history()
    assert hub.index(ar.msg_ids[0]) < hub.index(pending.msg_ids[0])


# ----- ar.data, queue_status(verbose=True) -----

def test_data_is_an_empty_dict_per_engine(rc):
    ar = rc[:].execute("x = 1")
    ar.get(timeout=10)
    assert ar.data == [{}] * 4
    assert [m.data for m in ar.metadata] == [{}] * 4


def test_queue_status_verbose_lists_msg_ids(rc):
    rc.wait(timeout=30)
    busy = rc[3].apply_async(sleep_then, 0.6, "busy")
    queued = [rc[3].apply_async(sleep_then, 0, i) for i in range(3)]  # behind the window of 2
    lists = rc.queue_status(verbose=True)
    assert set(lists) == {*rc.ids, "unassigned"}
    mine = {m for ar in [busy, *queued] for m in ar.msg_ids}
    waiting_or_sent = set(lists[3]["queue"]) | set(lists[3]["tasks"])
    assert waiting_or_sent == mine
    assert lists[3]["queue"]  # at least one waits in the controller
    assert isinstance(lists["unassigned"], list)
    assert set(rc.queue_status(3, verbose=True)) == {"queue", "tasks", "completed"}
    assert set(rc.queue_status([3], verbose=True)) == {3, "unassigned"}
    rc.wait([busy, *queued], timeout=10)
    done = rc.queue_status(3, verbose=True)
    assert mine <= set(done["completed"]) and done["queue"] == done["tasks"] == []
    counts = rc.queue_status(3)
    assert counts["completed"] >= len(done["completed"])


def test_get_result_times_are_the_tasks_own(rc):
    ar = rc[:].apply_async(sleep_then, 0.2, "x")
    ar.get(timeout=10)
    time.sleep(0.3)
    hr = rc.get_result(ar.msg_ids)
    hr.get(timeout=10)
    for original, stored in zip(ar.metadata, hr.metadata):
        assert stored.started == original.started and stored.completed == original.completed
        assert abs((stored.submitted - original.submitted).total_seconds()) < 0.1  # the controller's note
        assert stored.submitted <= stored.started
    assert hr.wall_time < ar.wall_time + 0.2  # as ipyparallel's test_asyncresult
    assert hr.serial_time == ar.serial_time
