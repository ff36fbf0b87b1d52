"""A short soak (bench/soak): 4 engines under a mixed workload for 90 s while an engine, a
client and the controller are each SIGKILLed and restarted at least once; every task id any
client was handed must end correct or reported (lost, engine died, aborted, interrupted), none
wrong, unknown or unanswered. The accounting itself is checked first on made-up ledgers, so a
soak that cannot fail does not pass unnoticed."""

import importlib.util
import json
import os
import subprocess
import time
import types

from conftest import ROOT, TESTUDO_BIN

SOAK = ROOT / "bench" / "soak"


def ledger_module():
    spec = importlib.util.spec_from_file_location("soak_ledger", ROOT / "bench" / "soak_ledger.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeFailure(Exception):
    """What get_result raises for a task that did not succeed: an outcome and an ename."""

    def __init__(self, outcome, ename="", evalue=""):
        super().__init__(evalue)
        self.outcome = types.SimpleNamespace(name=outcome)
        self.ename, self.evalue = ename, evalue


def test_the_accounting_catches_wrong_values_unknown_ids_and_unanswered_tasks():
    sl = ledger_module()
    data = sl.blob(3000, 9)
    records = [
        {"t": "task", "kind": "apply", "ids": [1, 2], "expect": [5, 6]},
        {"t": "task", "kind": "map", "ids": [3, 4, None], "base": 10, "n": 3, "chunk": 2},  # chunk 3: no id
        {"t": "task", "kind": "pull", "ids": [5], "size": 3000, "sha": sl.digest(data)},
        {"t": "task", "kind": "pull", "ids": [6], "size": 3000, "sha": sl.digest(data)},
        {"t": "checked", "ids": [6]},  # checked by its client, then purged
        {"t": "task", "kind": "long", "ids": [7, 8, 9], "expect": [1, 2, 3]},
    ]
    states = {i: "succeeded" for i in range(1, 6)}
    states.update({7: "lost", 8: "failed", 9: "failed"})
    values = {1: 5, 2: 6, 3: [sl.square_plus(10), sl.square_plus(11)], 4: [sl.square_plus(12)], 5: data,
              7: FakeFailure("LOST", "TaskLost"), 8: FakeFailure("ENGINE_DIED", "EngineError"),
              9: FakeFailure("PYTHON_ERROR", "KeyboardInterrupt")}
    good = sl.account(records, states, values)
    assert sl.failed(good) == {}, good
    assert good["classes"] == {"correct": 5, "correct_checked_then_purged": 1, "lost": 1, "engine_died": 1,
                               "interrupted": 1}
    assert sl.submissions_without_id(records) == 1

    def verdict_with(states_change=None, values_change=None):
        return sl.account(records, {**states, **(states_change or {})}, {**values, **(values_change or {})})

    # A wrong value, of each shape.
    assert sl.failed(verdict_with(values_change={2: 7})) == {"wrong": 1}
    assert sl.failed(verdict_with(values_change={4: [sl.square_plus(13)]})) == {"wrong": 1}
    assert sl.failed(verdict_with(values_change={5: sl.blob(3000, 8)})) == {"wrong": 1}
    # An error no fault explains (a pull's NameError would mean a namespace lost).
    assert sl.failed(verdict_with(values_change={1: FakeFailure("PYTHON_ERROR", "NameError")})) == {"wrong": 1}
    # An id the controller does not know, unless its client checked and purged it.
    assert sl.failed(verdict_with(states_change={3: "unknown"})) == {"unknown": 1}
    del states[1]
    assert sl.failed(verdict_with()) == {"unknown": 1}
    states[1] = "succeeded"
    # A task still running when everything has settled, or finished without a value.
    assert sl.failed(verdict_with(states_change={7: "running"})) == {"unanswered": 1}
    assert sl.failed(sl.account(records, states, {k: v for k, v in values.items() if k != 2})) == {"unanswered": 1}


def test_a_short_soak_with_every_fault(tmp_path):
    out = tmp_path / "soak.json"
    env = dict(os.environ, TESTUDO_BIN=TESTUDO_BIN)
    started = time.monotonic()
    soak = subprocess.run([str(SOAK), "--minutes", "1.5", "--engines", "4", "--clients", "3", "--max-push-mb", "20",
                           "--fault-interval", "10", "--seed", "17", "--json", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    wall = time.monotonic() - started
    print(soak.stdout[-6000:], soak.stderr[-3000:])
    assert soak.returncode == 0, soak.stdout[-6000:] + soak.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert all(figures["faults"].get(kind, 0) >= 1 for kind in ("engine", "client", "controller")), figures["faults"]
    assert figures["failing"] == {} and figures["unbidden_deaths"] == [] and figures["live_wrong"] == []
    classes = figures["classes"]
    assert classes.get("correct", 0) > 1000, classes
    for kind in ("map", "apply", "push", "pull", "long", "abort", "interrupt", "execute"):
        assert kind in figures["by_kind"], (kind, figures["by_kind"])
    assert figures["fetched_predecessor"], "a successor fetched its predecessor's results"
    assert wall < 200, f"the short soak took {wall:.0f} s"
