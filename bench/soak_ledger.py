"""The soak's ledger and its accounting (bench/soak): what a client was handed, written down
before anything else can happen to it, and the verdict on each task id at the end.

A ledger is one JSON-lines file per client process, appended with one write() per record, so
a record is either whole or absent when the process is SIGKILLed. Records:

    {"t": "task", "kind": K, "ids": [...], ...}   task ids handed out, and what each must answer
    {"t": "checked", "ids": [...]}                a pull the client verified, then purged
    {"t": "event", ...}                           anything else worth reading afterwards

Kinds and what each id must answer (a value, or a failure the controller gives a reason for):

    map        ids[i] is chunk i of square_plus over range(base, base + n), `chunk` items each
    apply      mul_add(a, b) == expect        long   nap(seconds, token) == expect
    execute    an ExecuteReply                push   None
    pull       bytes of `size` whose SHA-256 is `sha`
    abort      as apply, or aborted (the client aborted them while queued)
    interrupt  as long, or KeyboardInterrupt (the client interrupted its engine)

The functions the engines run live here too; the client pickles this module by value
(cloudpickle.register_pickle_by_value), so engines need nothing of bench/.
"""
import collections
import hashlib
import json
import os

# ----- what the engines run -----


def square_plus(x):
    return x * x + 7


def mul_add(a, b):
    return a * b + 1


def nap(seconds, token):
    import time
    time.sleep(seconds)
    return token * 3 + 1


def blob(size, token):
    """`size` bytes, different for each token, cheap to make (a numpy array when numpy is
    there: pickle protocol 5 sends it out of band, as users' arrays go)."""
    try:
        import numpy
    except ImportError:
        numpy = None
    pattern = (token.to_bytes(8, "little") + bytes(range(248))) * 4096  # 1 MiB
    reps, rest = divmod(size, len(pattern))
    data = pattern * reps + pattern[:rest]
    return numpy.frombuffer(data, dtype=numpy.uint8).copy() if numpy is not None else data


def digest(value):
    return hashlib.sha256(memoryview(value).cast("B")).hexdigest()


# ----- writing and reading ledgers -----


class Ledger:
    """One process's ledger file. Not thread-safe (one writer per file)."""

    def __init__(self, path):
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(self, **record):
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        os.write(self._fd, line)  # one write: whole or absent after a SIGKILL

    def close(self):
        os.close(self._fd)


def read_ledger(path):
    out = []
    with open(path) as f:
        for line in f:
            if line.endswith("\n"):
                out.append(json.loads(line))
    return out


def read_ledgers(directory):
    """{file name: [records]} of every ledger in `directory`."""
    return {name: read_ledger(os.path.join(directory, name))
            for name in sorted(os.listdir(directory)) if name.endswith(".jsonl")}


# ----- the verdict on each task id -----

# Classes that are a correct end for a task under faults; anything else fails the soak.
ACCEPTED = ("correct", "correct_checked_then_purged", "lost", "engine_died", "no_such_engine", "aborted",
            "interrupted", "unreachable", "shutting_down")
# Never acceptable: a wrong value or unexpected error, an id the controller does not know, a
# task neither answered nor reported when the load has long stopped.
FAILING = ("wrong", "unknown", "unanswered")


def expectations(records):
    """{task id: (kind, expected)} from ledger records; expected is what a success must equal
    (None: any value of the right shape, see check_value)."""
    out = {}
    for r in records:
        if r.get("t") != "task":
            continue
        kind, ids = r["kind"], r["ids"]
        if kind == "map":
            base, n, chunk = r["base"], r["n"], r["chunk"]
            for i, task_id in enumerate(ids):
                if task_id is not None:
                    lo = base + i * chunk
                    out[task_id] = (kind, [square_plus(x) for x in range(lo, min(lo + chunk, base + n))])
        elif kind in ("apply", "long", "abort", "interrupt"):
            for task_id, value in zip(ids, r["expect"]):
                out[task_id] = (kind, value)
        elif kind == "pull":
            out[ids[0]] = (kind, (r["size"], r["sha"]))
        elif kind in ("execute", "push"):
            for task_id in ids:  # one per engine of the view
                out[task_id] = (kind, None)
        else:
            raise ValueError(f"unknown kind in ledger: {kind!r}")
    out.pop(None, None)  # submissions the controller handed no id (the connection dropped first)
    return out


def submissions_without_id(records):
    return sum(r["ids"].count(None) for r in records if r.get("t") == "task")


def check_value(kind, expected, value):
    """True if `value` is what a successful task of this kind must return."""
    if kind == "pull":
        size, sha = expected
        try:
            return len(memoryview(value).cast("B")) == size and digest(value) == sha
        except TypeError:
            return False
    if kind == "push":
        return value is None
    if kind == "execute":
        return type(value).__name__ == "ExecuteReply"
    return value == expected


def classify(kind, expected, value):
    """The class of one finished task: `value` is get_result's value or the exception it
    raised. Returns (class, reason)."""
    if not isinstance(value, BaseException):
        return ("correct", "") if check_value(kind, expected, value) else ("wrong", f"{kind}: got {short(value)}")
    outcome = getattr(getattr(value, "outcome", None), "name", None)
    ename = getattr(value, "ename", type(value).__name__)
    by_outcome = {"LOST": "lost", "ENGINE_DIED": "engine_died", "NO_SUCH_ENGINE": "no_such_engine",
                  "ABORTED": "aborted", "UNREACHABLE": "unreachable", "SHUTTING_DOWN": "shutting_down",
                  "NO_SUCH_TASK": "unknown"}
    if outcome in by_outcome:
        return by_outcome[outcome], f"{ename}: {short(getattr(value, 'evalue', value))}"
    if outcome == "PYTHON_ERROR" and ename == "KeyboardInterrupt":
        return "interrupted", ""
    return "wrong", f"{kind}: {outcome or '?'} {ename}: {short(getattr(value, 'evalue', value))}"


def short(value, limit=160):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def account(records, states, values):
    """The verdict on every task id in `records` (all ledgers' records together).

    states: {task id: the controller's state ("unknown" for an id it does not know)};
    values: {task id: get_result's value or exception} for the finished ones.
    Returns {"classes": Counter, "by_kind": {kind: Counter}, "examples": {class: [(id, reason)]}}."""
    expect = expectations(records)
    checked = {i for r in records if r.get("t") == "checked" for i in r["ids"]}
    classes, by_kind = collections.Counter(), collections.defaultdict(collections.Counter)
    examples = collections.defaultdict(list)
    for task_id, (kind, expected) in sorted(expect.items()):
        state = states.get(task_id, "unknown")
        if state == "unknown":
            verdict, reason = ("correct_checked_then_purged", "") if task_id in checked else \
                ("unknown", "the controller does not know this id")
        elif state in ("queued", "running"):
            verdict, reason = "unanswered", f"still {state}"
        elif task_id not in values:
            verdict, reason = "unanswered", f"state {state} but get_result gave nothing"
        else:
            verdict, reason = classify(kind, expected, values[task_id])
        classes[verdict] += 1
        by_kind[kind][verdict] += 1
        if verdict not in ("correct", "correct_checked_then_purged") and len(examples[verdict]) < 5:
            examples[verdict].append((task_id, reason))
    return {"classes": classes, "by_kind": dict(by_kind), "examples": dict(examples)}


def failed(verdict):
    """The classes of `account`'s verdict that fail the soak (empty: it passed)."""
    return {c: n for c, n in verdict["classes"].items() if c in FAILING and n}


# ----- asking the controller -----


def fetch(rc, ids, kinds, batch=2000, timeout=120.0):
    """({id: state}, {id: value or exception}) for `ids` from the controller, by task id as any
    process of the same identity may ask (rc.result_status's records, rc.get_result). Values
    of finished tasks only; pulls one at a time (they may be hundreds of MB each)."""
    states, values = {}, {}
    ids = sorted(set(ids))
    for start in range(0, len(ids), batch):
        part = ids[start:start + batch]
        for r in json.loads(rc._native.result_status(part))["records"]:
            states[int(r["task_id"])] = r["state"]
    done = [i for i in ids if states.get(i) not in (None, "unknown", "queued", "running")]
    small = [i for i in done if kinds.get(i) != "pull"]
    for start in range(0, len(small), batch):
        part = small[start:start + batch]
        got = rc.get_result(part, block=False).get(timeout=timeout, return_exceptions=True)
        values.update(zip(part, got))
    for i in done:
        if kinds.get(i) == "pull":
            values[i] = rc.get_result([i], block=False).get(timeout=timeout, return_exceptions=True)[0]
    return states, values
