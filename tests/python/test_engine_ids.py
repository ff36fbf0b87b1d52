"""Stable engine ids (docs/architecture.md, "Engine ids"): an engine process keeps its id across a
controller restart with --reuse, a restarted engine gets a new one, and an id is never given to
another engine, so a view made earlier can only reach the namespace it was made for. Real processes."""

import json
import os
import signal
import subprocess

import pytest

from conftest import TESTUDO_BIN, kill_processes, wait_until


def start_engine(c):
    """One more engine process for cluster `c`; its pid joins those the teardown kills."""
    log = open(c.path("log", f"engine-extra-{len(c.engine_pids)}.log"), "w")
    proc = subprocess.Popen([TESTUDO_BIN, "--profile", c.profile, "engine"], env=c.env, stdout=log, stderr=log,
                            start_new_session=True)
    c.engine_pids.append(proc.pid)


def ids_now(rc):
    try:
        return rc.ids
    except ConnectionError:  # the client is still redialing the restarted controller
        return None


def test_engines_keep_their_ids_across_a_controller_sigkill_and_reuse(own_cluster):
    c = own_cluster(3, extra=("--reuse",))
    rc = c.client()
    restarted = None
    try:
        rc.wait_for_engines(3, timeout=30)
        assert rc.ids == [0, 1, 2]
        pids = dict(zip(rc.ids, rc[:].apply_sync(os.getpid)))
        for engine in (0, 1, 2):
            rc[engine].push({"mine": engine * 10}, block=True)
        view = rc[[2, 1]]
        view.block = True
        # Engine 0 ends before the crash: the two others must not slide down to ids 0 and 1.
        os.kill(pids[0], signal.SIGKILL)
        assert wait_until(lambda: rc.ids == [1, 2], timeout=20)
        # A read of the task store commits what it has pending (otherwise a 20 ms timer does,
        # and a loaded machine could let the SIGKILL win that race: tasks lost at start).
        rc.result_status(rc.history)
        os.kill(c.controller_pid, signal.SIGKILL)

        log = open(c.path("log", "controller-restarted.log"), "w")
        restarted = subprocess.Popen([TESTUDO_BIN, "--profile", c.profile, "controller", "--reuse"], env=c.env,
                                     stdout=log, stderr=log, start_new_session=True)
        assert wait_until(lambda: ids_now(rc) == [1, 2], timeout=30), ids_now(rc)
        # The same processes under the same ids, and the view made before reads what was pushed then.
        assert dict(zip(rc.ids, rc[:].apply_sync(os.getpid))) == {1: pids[1], 2: pids[2]}
        assert view.pull("mine") == [20, 10]
        assert view["mine"] == [20, 10]

        status = json.loads(c.run("status", "--json").stdout)
        assert status["resumed"] is True and status["engines_back"] == [1, 2]
        assert status["engines_not_back"] == [0] and status["engines_not_back_count"] == 1
        assert status["tasks_lost_at_start"] == 0
        assert status["started_at"].endswith("Z")
        line = c.run("status").stdout.splitlines()[0]
        assert "restarted with --reuse; back with their ids: engine(s) 1, 2; not back: engine(s) 0" in line, line
        # A newcomer takes none of the remembered ids, not even the one whose engine is gone.
        start_engine(c)
        assert wait_until(lambda: rc.ids == [1, 2, 3], timeout=30), rc.ids
        with pytest.raises(IndexError, match="engine 0 is gone"):
            rc[0]
    finally:
        rc.close()
        if restarted is not None:
            restarted.kill()
            restarted.wait()
        kill_processes(c)


def test_a_restarted_engine_gets_a_new_id_and_its_old_id_is_gone_for_good(own_cluster):
    c = own_cluster(2)
    rc = c.client()
    try:
        rc.wait_for_engines(2, timeout=30)
        old = rc[0]
        old.block = True
        old["secret"] = 42
        os.kill(old.apply_sync(os.getpid), signal.SIGKILL)
        assert wait_until(lambda: rc.ids == [1], timeout=20)
        # The engine is started again: a new process with an empty namespace, under a new id.
        start_engine(c)
        assert wait_until(lambda: rc.ids == [1, 2], timeout=30), rc.ids
        assert rc[2].apply_sync(lambda: "secret" in globals()) is False
        # Every way of reaching the old id fails and says why; nothing runs on a fresh namespace.
        with pytest.raises(IndexError, match=r"engine 0 is gone: .*a restarted engine gets a new id"):
            old.pull("secret")
        with pytest.raises(IndexError, match=r"engine 0 is gone.*engine 5 is not registered"):
            rc[[0, 5]]
        cli = c.run("exec", "-t", "0", "secret", check=False)
        assert cli.returncode != 0
        assert "engine 0 is gone: it disconnected or its process ended" in cli.stderr + cli.stdout
        never = c.run("exec", "-t", "9", "1", check=False)
        assert "no engine with id 9 (this cluster has given out ids 0 to 2)" in never.stderr + never.stdout
    finally:
        rc.close()
        kill_processes(c)
