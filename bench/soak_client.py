#!/usr/bin/python3
"""One client process of bench/soak: a mixed workload until the stop file appears, every task
id written to its ledger (soak_ledger.py) as soon as the controller hands it out. Killed with
SIGKILL at random by the soak; its successor (--predecessor) first fetches the results of the
tasks the killed one submitted, by task id, and checks them.

Not meant to be run by hand: bench/soak starts it with TESTUDO_HOME set to the soak's cluster.
"""
import argparse
import json
import math
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import soak_ledger as sl  # noqa: E402

# Seconds a client waits for one action's results before it goes on (the tasks go on too).
WAIT = 120.0


class Worker:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.ledger = sl.Ledger(args.ledger)
        self.token = args.seed * 1_000_000  # distinct values per client process
        self.rc = self.connect()
        self.lview = self.rc.load_balanced_view()

    def connect(self):
        import testudo
        deadline = time.monotonic() + 120
        while True:
            try:
                rc = testudo.Client(profile=self.args.profile, timeout=10)
                rc.wait_for_engines(1, timeout=30)
                return rc
            except Exception as e:  # the controller may be down for a restart
                if time.monotonic() > deadline:
                    raise
                self.event("connect_retry", error=sl.short(e))
                time.sleep(0.5)

    def event(self, what, **fields):
        self.ledger.write(t="event", what=what, at=time.time(), **fields)

    def next_token(self):
        self.token += 1
        return self.token

    def engine(self):
        ids = self.rc.ids
        if not ids:
            raise RuntimeError("no engines registered")
        return self.rc[self.rng.choice(ids)]

    @staticmethod
    def ids_of(ar):
        """The task ids the controller handed out for `ar`, None where it handed none (the
        connection dropped first)."""
        out = []
        for child in ar._children:
            try:
                out.extend(int(i) for i in child.task_ids(30.0))
            except Exception:
                out.append(None)
        return out

    def wait(self, ar, timeout=WAIT):
        try:
            return ar.get(timeout=timeout), None
        except Exception as e:
            return None, e

    # ----- actions -----

    def do_map(self):
        n = self.rng.randint(1000, 10000)
        chunk = self.rng.choice([1, 1, 10, 100])
        base = self.rng.randrange(10**6)
        flags = {"retries": 1} if self.rng.random() < 0.3 else {}
        ar = self.lview.map_async(sl.square_plus, range(base, base + n), chunksize=chunk, **flags)
        self.ledger.write(t="task", kind="map", ids=self.ids_of(ar), base=base, n=n, chunk=chunk)
        value, err = self.wait(ar)
        if err is None and value != [sl.square_plus(x) for x in range(base, base + n)]:
            self.event("live_wrong", kind="map", ids=ar.msg_ids[:3])

    def do_apply(self):
        ars, expect = [], []
        for _ in range(self.rng.randint(5, 50)):
            a, b = self.rng.randrange(10**9), self.rng.randrange(10**9)
            ars.append(self.engine().apply_async(sl.mul_add, a, b))
            expect.append(sl.mul_add(a, b))
        ids = [self.ids_of(ar)[0] for ar in ars]
        self.ledger.write(t="task", kind="apply", ids=ids, expect=expect)
        for ar, want in zip(ars, expect):
            value, err = self.wait(ar)
            if err is None and value != want:
                self.event("live_wrong", kind="apply", ids=ar.msg_ids)

    def do_execute(self):
        a, b = self.rng.randrange(1000), self.rng.randrange(1000)
        ar = self.engine().execute(f"soak_x{self.args.slot} = {a} * {b}", block=False)
        self.ledger.write(t="task", kind="execute", ids=self.ids_of(ar))
        self.wait(ar)

    def do_long(self):
        ars, expect = [], []
        for _ in range(self.rng.randint(1, 4)):
            seconds, token = round(self.rng.uniform(1, 5), 2), self.next_token()
            ars.append(self.lview.apply_async(sl.nap, seconds, token))
            expect.append(sl.nap(0, token))
        self.ledger.write(t="task", kind="long", ids=[self.ids_of(ar)[0] for ar in ars], expect=expect)
        for ar, want in zip(ars, expect):
            value, err = self.wait(ar)
            if err is None and value != want:
                self.event("live_wrong", kind="long", ids=ar.msg_ids)

    def do_push_pull(self):
        max_bytes = int(self.args.max_push_mb * 1e6)
        size = int(math.exp(self.rng.uniform(math.log(min(1e6, max_bytes)), math.log(max_bytes))))
        view, token = self.engine(), self.next_token()
        name = f"soak_blob{self.args.slot}"
        data = sl.blob(size, token)
        sha = sl.digest(data)
        ar = view.push({name: data}, block=False)
        self.ledger.write(t="task", kind="push", ids=self.ids_of(ar), size=size)
        _, err = self.wait(ar, timeout=600)
        del data
        if err is not None:
            return  # not there to pull (interrupted, engine gone, controller restarted)
        ar = view.pull(name, block=False)
        ids = self.ids_of(ar)
        self.ledger.write(t="task", kind="pull", ids=ids, size=size, sha=sha)
        value, err = self.wait(ar, timeout=600)
        if err is None:
            if sl.check_value("pull", (size, sha), value):
                # Checked here, then purged so that big results do not fill the task store
                # (the accounting counts it as checked; an unknown id without this is a fault).
                self.ledger.write(t="checked", ids=ids)
                self.rc.purge_results(ids)
            else:
                self.event("live_wrong", kind="pull", ids=ids)
        del value
        ar = view.execute(f"del {name}", block=False)
        self.ledger.write(t="task", kind="execute", ids=self.ids_of(ar))
        self.wait(ar)

    def do_abort(self):
        view = self.engine()
        token = self.next_token()
        blocker = view.apply_async(sl.nap, 3, token)
        self.ledger.write(t="task", kind="long", ids=self.ids_of(blocker), expect=[sl.nap(0, token)])
        victims, expect = [], []
        for _ in range(self.rng.randint(2, 8)):
            a, b = self.rng.randrange(10**6), self.rng.randrange(10**6)
            victims.append(view.apply_async(sl.mul_add, a, b))
            expect.append(sl.mul_add(a, b))
        self.ledger.write(t="task", kind="abort", ids=[self.ids_of(ar)[0] for ar in victims], expect=expect)
        time.sleep(0.2)
        self.rc.abort(victims)
        for ar in [blocker, *victims]:
            self.wait(ar)

    def do_interrupt(self):
        view = self.engine()
        token = self.next_token()
        ar = view.apply_async(sl.nap, 20, token)
        ids = self.ids_of(ar)
        self.ledger.write(t="task", kind="interrupt", ids=ids, expect=[sl.nap(0, token)])
        if ids[0] is None:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # interrupt it while it runs, not whatever is before it
            if json.loads(self.rc._native.result_status(ids))["records"][0]["state"] == "running":
                break
            time.sleep(0.05)
        self.rc.interrupt(targets=view.targets)
        self.wait(ar, timeout=60)

    # ----- the successor's first job -----

    def fetch_predecessor(self, path):
        records = sl.read_ledger(path)
        expect = sl.expectations(records)
        checked = {i for r in records if r.get("t") == "checked" for i in r["ids"]}
        ids = [i for i in expect if i not in checked]
        kinds = {i: k for i, (k, _) in expect.items()}
        states, values = sl.fetch(self.rc, ids, kinds, timeout=WAIT)
        verdicts = {}
        for i in ids:
            if i in values:
                kind, want = expect[i]
                verdict = sl.classify(kind, want, values[i])[0]
                if verdict == "correct" and kind == "pull":
                    self.ledger.write(t="checked", ids=[i])
                    self.rc.purge_results([i])
            else:
                verdict = states.get(i, "unknown")  # still queued/running, or unknown
            verdicts[verdict] = verdicts.get(verdict, 0) + 1
        self.event("fetched_predecessor", predecessor=os.path.basename(path), ids=len(ids), verdicts=verdicts)

    def run(self):
        self.event("started", pid=os.getpid())
        for path in self.args.predecessor:
            try:
                self.fetch_predecessor(path)
            except Exception as e:
                self.event("fetch_failed", predecessor=os.path.basename(path), error=sl.short(e))
        actions = [(self.do_map, 30), (self.do_apply, 20), (self.do_execute, 10), (self.do_long, 10),
                   (self.do_push_pull, 15), (self.do_abort, 8), (self.do_interrupt, 7)]
        done = {}
        while not os.path.exists(self.args.stop_file):
            action = self.rng.choices([a for a, _ in actions], weights=[w for _, w in actions])[0]
            try:
                action()
                done[action.__name__] = done.get(action.__name__, 0) + 1
            except Exception as e:  # a controller restart or a dead engine mid-action
                self.event("action_failed", action=action.__name__, error=sl.short(e))
                time.sleep(0.5)
        self.event("stopped", actions=done)
        self.rc.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--slot", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--max-push-mb", type=float, required=True)
    parser.add_argument("--stop-file", required=True)
    parser.add_argument("--predecessor", action="append", default=[])
    args = parser.parse_args()
    import cloudpickle
    cloudpickle.register_pickle_by_value(sl)  # engines need nothing of bench/
    Worker(args).run()


if __name__ == "__main__":
    main()
