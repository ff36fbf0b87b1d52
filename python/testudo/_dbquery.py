"""rc.db_query's MongoDB-style queries, as ipyparallel's task database takes them.

The controller filters a user's records only by state, submission time and task id (strict:
it refuses anything else). This module checks a whole query first, so that an unknown field
or operator is an error and never a wider answer; turns what it can into the controller's
filter, so that fewer records travel; and evaluates the whole query on what comes back.
"""

import datetime
import numbers

# A record's fields (rc.db_query's `keys`). The controller's times are seconds since 1970
# (float); the records handed back, and the query's tests, hold timezone-aware UTC datetimes
# (both made from the same floats, so an $eq on a time read from a record matches it).
FIELDS = ("msg_id", "state", "kind", "engine_id", "submitted", "started", "completed", "result_bytes", "error",
          "header")
STATES = ("queued", "running", "succeeded", "failed", "aborted", "lost")
_TIMES = ("submitted", "started", "completed")
_UTC = datetime.timezone.utc


def _lt(a, b):
    return a is not None and b is not None and a < b


def _gt(a, b):
    return a is not None and b is not None and a > b


def _le(a, b):
    return a is not None and b is not None and a <= b


def _ge(a, b):
    return a is not None and b is not None and a >= b


# ipyparallel's operators (controller/dictdb.py). An order comparison with a missing value
# (a task not started, say) is false, as in SQL, rather than a TypeError.
OPERATORS = {
    "$eq": lambda a, b: a == b,
    "$ne": lambda a, b: a != b,
    "$lt": _lt,
    "$gt": _gt,
    "$lte": _le,
    "$gte": _ge,
    "$in": lambda a, b: a in b,
    "$nin": lambda a, b: a not in b,
    "$all": lambda a, b: all(a in bb for bb in b),
    "$mod": lambda a, b: isinstance(a, numbers.Integral) and a % b[0] == b[1],
    "$exists": lambda a, b: (a is not None) == bool(b),
}
_LISTS = ("$in", "$nin", "$all")
_ALIASES = {"$le": "$lte", "$ge": "$gte"}


def _value(field, value):
    """A query value in the records' terms: msg_ids as str, times as aware datetimes (a naive
    one is local time, as ipyparallel reads it; a number is seconds since 1970)."""
    if field == "msg_id" and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(value)
    if field in _TIMES:
        if isinstance(value, datetime.datetime):
            return value.astimezone(_UTC)
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return datetime.datetime.fromtimestamp(value, _UTC)
    if field == "state" and isinstance(value, str) and value not in STATES:
        raise ValueError(f"db_query: unknown state {value!r} ({', '.join(STATES)})")
    return value


def compile_query(query):
    """{field: value or {operator: operand}} -> [(field, operator, operand)], checked.
    Raises ValueError naming the bad field or operator, TypeError for a query that is not a dict."""
    if query is None:
        return []
    if not isinstance(query, dict):
        raise TypeError(f"db_query: the query must be a dict, not {type(query).__name__}")
    tests = []
    for field, cond in query.items():
        if field not in FIELDS:
            raise ValueError(f"db_query: unknown field {field!r}; fields: {', '.join(FIELDS)}")
        if not isinstance(cond, dict):
            tests.append((field, "$eq", _value(field, cond)))
            continue
        for op, operand in cond.items():
            if op not in OPERATORS:
                hint = f" (did you mean {_ALIASES[op]}?)" if op in _ALIASES else ""
                raise ValueError(f"db_query: unknown operator {op!r} for {field!r}{hint}; "
                                 f"operators: {', '.join(OPERATORS)}")
            if op in _LISTS:
                if isinstance(operand, (str, bytes)) or not hasattr(operand, "__iter__"):
                    raise TypeError(f"db_query: {op} takes a list, not {type(operand).__name__}")
                operand = [_value(field, v) for v in operand]
            elif op == "$mod":
                if (not isinstance(operand, (list, tuple)) or len(operand) != 2
                        or not all(isinstance(v, numbers.Integral) for v in operand) or operand[0] == 0):
                    raise ValueError("db_query: $mod takes [divisor, remainder], a non-zero divisor")
            elif op != "$exists":
                operand = _value(field, operand)
            tests.append((field, op, operand))
    return tests


def msg_ids_wanted(tests):
    """The msg_ids a query is limited to (an $eq or $in on msg_id), or None."""
    wanted = None
    for field, op, operand in tests:
        if field == "msg_id" and op in ("$eq", "$in"):
            ids = {operand} if op == "$eq" else set(operand)
            wanted = ids if wanted is None else wanted & ids
    return None if wanted is None else [i for i in wanted if isinstance(i, str) and i.isdigit()]


def controller_filter(tests):
    """The controller's filter ({"states": [...], "submitted_after": t}) that keeps at least
    every record the query matches; None when no record can match (no state is left: the
    controller reads an empty list of states as any state)."""
    flt = {}
    states = set(STATES)
    after = None
    for field, op, operand in tests:
        if field == "state":
            if op == "$eq":
                states &= {operand}
            elif op == "$in":
                states &= set(operand)
            elif op == "$ne":
                states -= {operand}
            elif op == "$nin":
                states -= set(operand)
        elif field == "submitted" and op in ("$gt", "$gte", "$eq") and isinstance(operand, datetime.datetime):
            # A millisecond early: the controller's bound is strict and in microseconds; the
            # exact test runs here.
            bound = operand.timestamp() - 1e-3
            after = bound if after is None else max(after, bound)
    if not states:
        return None
    if states != set(STATES):
        flt["states"] = sorted(states)
    if after is not None and abs(after) < 1e11:
        flt["submitted_after"] = after
    return flt


def matches(record, tests):
    for field, op, operand in tests:
        if not OPERATORS[op](record.get(field), operand):
            return False
    return True


def header(record):
    """ipyparallel's `header` of a task record, from what testudo records: msg_id, msg_type
    ('apply_request', 'execute_request', ...) and date (when it was submitted)."""
    return {"msg_id": record["msg_id"], "msg_type": f"{record['kind']}_request", "date": record["submitted"]}


def times_as_datetimes(record):
    """Turns `record`'s times (seconds since 1970) into timezone-aware UTC datetimes, in place,
    as ipyparallel's task records give them (None until known)."""
    for field in _TIMES:
        t = record.get(field)
        record[field] = datetime.datetime.fromtimestamp(t, _UTC) if t else None


def check_keys(keys):
    """`keys` as a list of fields, msg_id always first (as ipyparallel always includes it)."""
    if keys is None:
        return None
    if isinstance(keys, str):
        keys = [keys]
    keys = list(keys)
    for key in keys:
        if key not in FIELDS:
            raise ValueError(f"db_query: unknown key {key!r}; fields: {', '.join(FIELDS)}")
    return ["msg_id"] + [k for k in keys if k != "msg_id"]
