"""Engine lifecycle against real clusters: live output while a task runs, bounded output and
result sizes, stuck-engine detection by heartbeat, engine tags and selection, and stopping
single engines. Each test checks what a user of the client sees."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import cloudpickle
import pytest

import testudo
from conftest import TESTUDO_BIN, kill_processes, pid_gone, wait_until

# The task functions below travel by value: engines cannot import this module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

MiB = 1 << 20
GiB = 1 << 30
DEFAULT_OUTPUT_LIMIT = 64 << 20  # characters of stdout kept per request (engine default)


def _peak_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def _reset_peak(pid):
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def _engine_pids(rc):
    """{engine_id: pid}; engine ids do not follow the order of cluster.engine_pids."""
    ids = rc.ids
    return dict(zip(ids, rc[ids].apply_sync(os.getpid)))


def _start_engine(cluster, *args, log=None):
    """One more engine of `cluster`, started by hand (`testudo engine ...`)."""
    return subprocess.Popen([TESTUDO_BIN, "--profile", cluster.profile, "engine", *args], env=cluster.env,
                            stdin=subprocess.DEVNULL, stdout=log or subprocess.DEVNULL,
                            stderr=subprocess.STDOUT if log else subprocess.DEVNULL)


def _stop_engine(proc):
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def _new_engine_id(rc, before, timeout=30):
    """The id of the one engine that registers after `before` (a set of ids)."""
    found = []
    assert wait_until(lambda: bool(found.extend(set(rc.ids) - before) or found), timeout=timeout), \
        "the extra engine did not register"
    assert len(set(found)) == 1, found
    return found[0]


# ----- 1. live output -----


def ticking(n=5, period=0.3):
    import sys
    import time
    for i in range(n):
        print(f"tick {i}")
        print(f"warn {i}", file=sys.stderr)
        time.sleep(period)
    return "done"


def test_live_output_arrives_while_the_task_runs(rc):
    eid = rc.ids[0]
    ar = rc[eid].apply_async(ticking)
    chunks = []

    def seen(stream, text):
        return any(s == stream and text in t for _, s, t in chunks)

    assert wait_until(lambda: bool(chunks.extend(ar.take_live_output()) or
                                   (seen("stdout", "tick 0\n") and seen("stderr", "warn 0\n"))), timeout=5), chunks
    # The first lines came while the task still runs (it runs ~1.5 s).
    assert not ar.ready()
    assert {e for e, _, _ in chunks} == {eid}
    assert {s for _, s, _ in chunks} <= {"stdout", "stderr"}
    assert "".join(t for _, s, t in chunks if s == "stdout").startswith("tick 0\n")
    assert "".join(t for _, s, t in chunks if s == "stderr").startswith("warn 0\n")
    assert ar.get(timeout=10) == "done"
    chunks.extend(ar.take_live_output())
    expected_out = "".join(f"tick {i}\n" for i in range(5))
    expected_err = "".join(f"warn {i}\n" for i in range(5))
    assert ar.stdout == expected_out
    assert ar.stderr == expected_err
    # Every line was also delivered live, exactly once, in order.
    assert "".join(t for _, s, t in chunks if s == "stdout") == expected_out
    assert "".join(t for _, s, t in chunks if s == "stderr") == expected_err
    assert ar.take_live_output() == []


def test_wait_interactive_shows_lines_and_progress(rc):
    ids = rc.ids
    ar = rc[ids].apply_async(ticking, 3, 0.3)
    out = io.StringIO()
    ar.wait_interactive(interval=0.05, file=out)
    text = out.getvalue()
    assert ar.get(timeout=1) == ["done"] * len(ids)
    for eid in ids:
        for i in range(3):
            assert f"[stdout:{eid}] tick {i}\n" in text, text
            assert f"[stderr:{eid}] warn {i}\n" in text, text
    assert f"{len(ids)}/{len(ids)} tasks finished" in text
    assert text.endswith("done\n")


# ----- 2. a flood of output is bounded -----


def flood():
    import sys
    chunk = "x" * (1 << 20)
    for _ in range(1024):
        sys.stdout.write(chunk)
    return "flooded"


def test_one_gigabyte_of_output_is_truncated_with_bounded_memory(rc):
    eid = rc.ids[-1]
    view = rc[eid]
    pid = view.apply_sync(os.getpid)
    _reset_peak(pid)
    base = _peak_rss(pid)
    ar = view.apply_async(flood)
    assert ar.get(timeout=14) == "flooded"
    note = (f"\n[testudo: output truncated: {GiB - DEFAULT_OUTPUT_LIMIT} more characters dropped; "
            f"the limit is {DEFAULT_OUTPUT_LIMIT} per request]\n")
    out = ar.stdout
    assert len(out) == DEFAULT_OUTPUT_LIMIT + len(note)
    assert out.endswith(note)
    assert out[:DEFAULT_OUTPUT_LIMIT] == "x" * DEFAULT_OUTPUT_LIMIT
    del out, ar
    peak = _peak_rss(pid)
    assert peak < 500 * 10**6, f"engine peak RSS {peak / 1e6:.0f} MB (was {base / 1e6:.0f} MB before)"
    # The engine serves the next request, with nothing left of the flood.
    after = view.apply_async(lambda: 6 * 7)
    assert after.get(timeout=10) == 42
    assert after.stdout == ""


# ----- 3. result size limit -----


def test_result_size_limit_of_an_engine(own_cluster):
    c = own_cluster(1)
    with c.client() as rc:
        rc.wait_for_engines(1, timeout=30)
        before = set(rc.ids)
        proc = _start_engine(c, "--max-result-bytes", "1000000")
        try:
            eid = _new_engine_id(rc, before)
            view = rc[eid]
            view.block = True
            view.execute("big = b'x' * 2_000_000; small = b'y' * 1000")
            with pytest.raises(testudo.RemoteError) as info:
                view.pull("big")
            assert info.value.ename == "MemoryError"
            assert "exceeds the limit of 1000000 bytes" in info.value.evalue
            assert "--max-result-bytes" in info.value.evalue
            with pytest.raises(testudo.RemoteError) as info:
                view.apply_sync(lambda: b"z" * 2_000_000)
            assert info.value.ename == "MemoryError"
            assert view.pull("small") == b"y" * 1000
            # The same pull works on an engine with the default limit.
            other = [i for i in rc.ids if i != eid][0]
            rc[other].execute("big = b'x' * 2_000_000", block=True)
            assert rc[other].pull("big", block=True) == b"x" * 2_000_000
            # And the limited engine still works after refusing.
            assert view.apply_sync(lambda: "ok") == "ok"
        finally:
            _stop_engine(proc)


# ----- 4. a stuck engine is declared dead by heartbeat -----


def test_stopped_engine_is_detected_by_heartbeat(own_cluster):
    c = own_cluster(2, extra=("--heartbeat-timeout", "1"))
    with c.client() as rc:
        rc.wait_for_engines(2, timeout=30)
        pids = _engine_pids(rc)
        victim, other = sorted(pids)[0], sorted(pids)[1]
        ar = rc[victim].apply_async(lambda: __import__("time").sleep(30))
        time.sleep(0.3)
        assert not ar.ready()
        os.kill(pids[victim], signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(testudo.RemoteError) as info:
                ar.get(timeout=5)
            elapsed = time.monotonic() - t0
            assert elapsed < 3.5, f"detected after {elapsed:.1f} s"
            assert info.value.ename == "EngineError"
            assert f"engine {victim}" in info.value.evalue
            assert info.value.engine_info["engine_id"] == victim
            assert wait_until(lambda: victim not in rc.ids, timeout=3)
            assert rc.ids == [other]
            assert rc[other].apply_sync(lambda: "alive") == "alive"
        finally:
            os.kill(pids[victim], signal.SIGCONT)
            os.kill(pids[victim], signal.SIGKILL)
        assert wait_until(lambda: pid_gone(pids[victim]), timeout=5)
        assert rc[other].apply_sync(lambda: "still alive") == "still alive"


# ----- 5. tags and selection -----


def test_engine_tags_and_select(own_cluster):
    c = own_cluster(2, extra=("--tag", "gpu=false", "--tag", "site=lab"))
    with c.client() as rc:
        rc.wait_for_engines(2, timeout=30)
        lab = sorted(rc.ids)
        proc = _start_engine(c, "--tag", "gpu=true", "--tag", "slots=4")
        try:
            gpu = _new_engine_id(rc, set(lab))
            pids = _engine_pids(rc)
            tags = rc.engine_tags()
            assert sorted(tags) == sorted(lab + [gpu])
            for eid, t in tags.items():
                assert isinstance(t["hostname"], str) and t["hostname"]
                assert isinstance(t["cores"], int) and t["cores"] >= 1
                assert isinstance(t["memory"], int) and t["memory"] > 0
                assert isinstance(t["pid"], int) and t["pid"] == pids[eid]
            for eid in lab:
                assert tags[eid]["gpu"] is False
                assert tags[eid]["site"] == "lab"
                assert "slots" not in tags[eid]
            assert tags[gpu]["gpu"] is True
            assert tags[gpu]["slots"] == 4 and isinstance(tags[gpu]["slots"], int)
            assert "site" not in tags[gpu]
            assert tags[gpu]["pid"] == proc.pid

            assert rc.select_ids(gpu=True) == [gpu]
            assert rc.select_ids(gpu=False) == lab
            assert rc.select_ids(site="lab") == lab
            assert rc.select_ids(gpu=True, slots=4) == [gpu]
            assert rc.select_ids(gpu=True, site="lab") == []
            assert rc.select(gpu=True).apply_sync(os.getpid) == [proc.pid]
            with pytest.raises(testudo.NoEnginesRegistered):
                rc.select(nonexistent=1)

            lview = rc.load_balanced_view(targets=rc.select_ids(site="lab"))
            used = set(lview.map_sync(lambda i: (__import__("time").sleep(0.02), __import__("os").getpid())[1],
                                      range(16)))
            assert used <= {pids[e] for e in lab}
            assert proc.pid not in used
        finally:
            _stop_engine(proc)


# ----- 6. stopping single engines -----


def test_shutdown_one_engine_and_broadcast(own_cluster):
    c = own_cluster(3)
    with c.client() as rc:
        rc.wait_for_engines(3, timeout=30)
        pids = _engine_pids(rc)
        assert sorted(rc.broadcast_view().apply_sync(os.getpid)) == sorted(pids.values())
        victim = sorted(pids)[1]
        rest = [e for e in sorted(pids) if e != victim]
        rc.shutdown(targets=[victim], block=True)
        assert rc.ids == rest
        assert wait_until(lambda: pid_gone(pids[victim]), timeout=10)
        assert not pid_gone(c.controller_pid)
        assert all(not pid_gone(pids[e]) for e in rest)
        assert rc[rest].apply_sync(os.getpid) == [pids[e] for e in rest]
        bview = rc.broadcast_view()
        result = bview.apply_sync(os.getpid)
        assert sorted(result) == sorted(pids[e] for e in rest)
        assert len(result) == len(rest)
        with pytest.raises(IndexError):
            rc[victim]


def _append_to(path, text):
    with open(path, "a") as f:
        f.write(text)
    return text


def test_tasks_sent_ahead_are_dropped_when_the_controller_goes(own_cluster, tmp_path):
    """An engine whose controller connection breaks drops the tasks sent ahead to it along with
    interrupting the running one: the controller failed them all (a restarted one reports them
    lost and ignores replies to them), so running them later only holds up new work. Found by
    bench/soak: after each controller restart, engines ran the old window's tasks and the new
    controller logged 'replied to task N it does not hold' for each."""
    c = own_cluster(1, extra=("--reuse",))
    rc = c.client()
    rc.wait_for_engines(1, timeout=30)
    view = rc[rc.ids[0]]
    marks = tmp_path / "ran"
    running = view.apply_async(time.sleep, 30)
    ahead = [view.apply_async(_append_to, str(marks), f"{i}\n") for i in range(4)]
    ids = [int(i) for ar in [running, *ahead] for i in ar.msg_ids]

    def state(i):
        return json.loads(rc._native.result_status([i]))["records"][0]["state"]
    assert wait_until(lambda: state(ids[0]) == "running", timeout=10)
    assert wait_until(lambda: state(ids[1]) == "running", timeout=10), "the window sends one task ahead"
    os.kill(c.controller_pid, signal.SIGKILL)
    assert wait_until(lambda: pid_gone(c.controller_pid), timeout=10)
    log_path = c.path("log", "controller-restarted.log")
    with open(log_path, "w") as log:
        restarted = subprocess.Popen([TESTUDO_BIN, "--profile", c.profile, "controller", "--reuse"], env=c.env,
                                     stdout=log, stderr=log, start_new_session=True)
    c.controller_pid = restarted.pid
    try:
        def back():
            try:
                return len(rc.ids) == 1
            except ConnectionError:
                return False
        assert wait_until(back, timeout=30)
        assert rc[:].apply_sync(_append_to, str(tmp_path / "new"), "new") == ["new"]
        time.sleep(0.5)
        assert not marks.exists(), f"tasks of the killed controller ran after it: {marks.read_text()!r}"
        values = rc.get_result(ids, block=False).get(timeout=30, return_exceptions=True)
        assert all(isinstance(v, testudo.error.TaskLost) for v in values), values
        with open(log_path) as f:
            assert "does not hold" not in f.read()
    finally:
        rc.close()
        kill_processes(c)  # the cluster's `stop` would wait for the controller it started
        restarted.wait()


def test_an_engine_joining_a_backlog_is_welcomed_before_its_first_task(own_cluster, tmp_path):
    """The scheduler sends waiting load-balanced tasks to an engine the moment it is added: it
    must be added after its welcome is sent. Before, with a backlog, the engine's first message
    was a task, which it refuses as a protocol error and redials, forever, failing the tasks
    sent to it each time (bench/soak: after a controller restart, clients resubmitted before
    the engines were back, and no engine ever registered again)."""
    c = own_cluster(1)
    # Not sealed: a sealing client's load-balanced tasks may go only to the engines it had
    # paired with when it submitted them (docs/security.md), so none would be the joining one.
    rc = c.client(e2e=False)
    rc.wait_for_engines(1, timeout=30)
    lview = rc.load_balanced_view()
    ar = lview.map_async(time.sleep, [0.02] * 300)
    assert wait_until(lambda: json.loads(rc._native.queue_status())["unassigned"] > 0, timeout=10)
    log_path = str(tmp_path / "joining-engine.log")
    joining = subprocess.Popen([TESTUDO_BIN, "--profile", c.profile, "engine", "--log-file", log_path], env=c.env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        ar.get(timeout=60)
        engines = {md["engine_id"] for md in ar.metadata}
        assert len(engines) == 2, f"the joining engine ran none of the backlog: {engines}"
        assert all(md["status"] == "ok" for md in ar.metadata)
        with open(log_path) as f:
            assert "unexpected first message" not in f.read()
    finally:
        joining.kill()
        joining.wait()
