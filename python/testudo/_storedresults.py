"""The client's stored results: this user's task records on the controller (get_result,
result_status, db_query, hub_history, purges) and this client's own history of them
(rc.history / results / metadata, purge_local_results, resubmit).

The controller keeps every result of every task of a user, whichever connection or process
sent it; the client keeps the msg_ids it sent (see _history) and reads values back from the
controller when it no longer holds them (see _localresults).
"""

import json

from . import _dbquery, error
from ._asyncresult import AsyncResult
from ._history import History
from ._testudo import Outcome

# Records per db_query request to the controller (its largest page is 100,000).
_DB_PAGE = 10_000


class StoredResults:
    """Client's methods over stored results, as a base class of Client (not used alone): they
    need its `_native` client, `_history`, `_purged_local`, `block`, `outstanding` and
    `_build_targets`. Thread-safety is Client's."""

    def get_result(self, indices_or_msg_ids=None, block=None, owner=True):
        """Results of earlier tasks by msg_id (str or int), e.g. after reconnecting or from
        another process: an AsyncResult, as ipyparallel's always (block=True: once it is done).
        Tasks still running answer when they finish; unknown ids raise KeyError (as
        RemoteError) from its get(), lost ones TaskLost."""
        from ._asyncresult import AsyncHubResult
        from ._lbview import _task_ids
        single = isinstance(indices_or_msg_ids, (str, int))
        ids = _task_ids(indices_or_msg_ids)
        if not ids:
            raise ValueError("get_result needs msg_ids")
        records = self._records(ids)
        kinds = {int(r["task_id"]): r.get("kind", "") for r in records}
        submitted = {int(r["task_id"]): r.get("submitted") for r in records}
        ar = AsyncHubResult(self, self._native.get_result(ids), kinds, single=single, submitted=submitted)
        if self.block if block is None else block:
            ar.wait()
        return ar

    def result_status(self, msg_ids, status_only=True):
        """{'pending': [...], 'completed': [...]} for msg_ids (with status_only=False, also
        msg_id: result for the completed ones). Unknown ids raise KeyError."""
        from ._lbview import _task_ids
        ids = _task_ids(msg_ids)
        out = {"pending": [], "completed": []}
        for r in self._records(ids):
            if r["state"] == "unknown":
                raise KeyError(f"no task {r['task_id']} of yours")
            key = "pending" if r["state"] in ("queued", "running") else "completed"
            out[key].append(str(r["task_id"]))
        if not status_only and out["completed"]:
            values = self.get_result(out["completed"]).get(return_exceptions=True)
            out.update(dict(zip(out["completed"], values)))
        return out

    def db_query(self, query=None, keys=None):
        """Records of your tasks matching a MongoDB-style `query`, as ipyparallel's: {field:
        value} or {field: {op: operand}} with $eq $ne $lt $gt $lte $gte $in $nin $all $mod
        $exists, e.g. {'msg_id': {'$in': ids}}, {'state': {'$nin': ['succeeded']}},
        {'completed': {'$ne': None}}, {'submitted': {'$gte': t}} (t a datetime, or seconds since
        1970). Fields: msg_id, state, kind, engine_id, submitted, started, completed,
        result_bytes, error, header (msg_id, msg_type, date); `keys` picks some (msg_id is always
        there). The records' times are timezone-aware UTC datetimes (None until known), as
        ipyparallel's. An unknown field or operator is a ValueError."""
        tests = _dbquery.compile_query(query)
        keys = _dbquery.check_keys(keys)
        wanted = _dbquery.msg_ids_wanted(tests)
        if wanted is not None:
            records = [r for r in self._records(wanted) if r["state"] != "unknown"] if wanted else []
        else:
            flt = _dbquery.controller_filter(tests)
            records = [] if flt is None else self._all_records(flt)
        out = []
        for r in records:
            rec = {"msg_id": str(r["task_id"]), "state": r["state"], "kind": r.get("kind"),
                   "engine_id": r.get("engine"), "submitted": r.get("submitted"), "started": r.get("started"),
                   "completed": r.get("completed"), "result_bytes": r.get("result_bytes"), "error": r.get("error")}
            _dbquery.times_as_datetimes(rec)
            rec["header"] = _dbquery.header(rec)
            if _dbquery.matches(rec, tests):
                out.append({k: rec[k] for k in keys} if keys else rec)
        return out

    def _all_records(self, flt):
        """Every record the controller's filter keeps, a page at a time (in task id order)."""
        records = []
        flt = dict(flt, limit=_DB_PAGE)
        while True:
            page = json.loads(self._native.db_query(json.dumps(flt)))["records"]
            records.extend(page)
            if len(page) < _DB_PAGE:
                return records
            flt["after_task_id"] = int(page[-1]["task_id"])

    def purge_hub_results(self, jobs=(), targets=()):
        """Delete stored results from the controller: `jobs` msg_ids/AsyncResults, or 'all' for
        every finished one of yours; `targets`: also those that ran on these engines. Returns
        how many were deleted."""
        from ._lbview import _task_ids
        everything = isinstance(jobs, str) and jobs == "all"
        ids = [] if everything else _task_ids(jobs)
        if targets and not everything:
            engines = self._build_targets(targets)
            ids += [int(r["msg_id"]) for r in self.db_query({"engine_id": {"$in": engines}}, keys=["engine_id"])]
        if not ids and not everything:
            return 0
        return self._native.purge_results(ids)

    def purge_local_results(self, jobs=(), targets=()):
        """Forget results here (rc.results, rc.metadata): `jobs` msg_ids/AsyncResults or 'all';
        `targets`: those that ran on these engines. The controller still has them
        (rc.get_result). Raises RuntimeError if one of them has not finished."""
        from ._localresults import purge_local
        purge_local(self, jobs, targets)

    def purge_results(self, jobs=(), targets=()):
        """purge_hub_results and, for the finished ones, purge_local_results. Returns how many
        the controller deleted."""
        from ._lbview import _task_ids
        deleted = self.purge_hub_results(jobs, targets)
        if isinstance(jobs, str) and jobs == "all":
            outstanding = {int(i) for i in self.outstanding}
            self._purged_local.update(i for i in self._history.task_ids() if i not in outstanding)
        else:
            outstanding = self.outstanding
            self._purged_local.update(i for i in _task_ids(jobs)
                                      if str(i) not in outstanding)
        self._history.forget_results()
        return deleted

    def purge_everything(self):
        """purge_results('all') and an empty rc.history."""
        self.purge_results("all")
        self._history = History()
        self._purged_local = set()

    def hub_history(self):
        """msg_ids of every task of yours the controller keeps (from any client), in order of
        submission."""
        records = self.db_query({}, keys=["submitted"])
        records.sort(key=lambda r: (r["submitted"].timestamp() if r["submitted"] else 0, int(r["msg_id"])))
        return [r["msg_id"] for r in records]

    @property
    def history(self):
        """msg_ids of every request this client sent, in order."""
        return self._history.msg_ids()

    @property
    def results(self):
        """{msg_id: value} of this client's finished tasks (a RemoteError for a failed one), as
        ipyparallel's rc.results; a value no longer held here is read from the controller."""
        from ._localresults import Results
        return Results(self)

    @property
    def metadata(self):
        """{msg_id: metadata} of this client's tasks (submitted, started, completed, engine_id,
        status, stdout, stderr ...), pending ones included."""
        from ._localresults import Metadata
        return Metadata(self)

    def resubmit(self, indices_or_msg_ids=None, metadata=None, block=None):
        """Run finished tasks again: their msg_ids (or indices into rc.history; default: the
        last). A direct task runs again on the same engine, a load-balanced one wherever the
        scheduler places it (its after/follow, met once, are not asked again). Returns an
        AsyncResult over the new tasks (block=True: their values).

        The controller keeps results, not requests: this client keeps the requests of its
        apply and execute tasks of up to 1 MiB (the latest 64 MiB of them). Others (map,
        push, pull, scatter, another client's, larger or older ones) raise NotImplementedError."""
        from ._lbview import _task_ids
        if metadata is not None:
            raise NotImplementedError("resubmit(metadata=...): the original request is sent as it was")
        if indices_or_msg_ids is None:
            indices_or_msg_ids = -1
        single = isinstance(indices_or_msg_ids, (str, int))
        items = [indices_or_msg_ids] if single else list(indices_or_msg_ids)
        history = None
        ids = []
        for item in items:
            if isinstance(item, int) and not isinstance(item, bool):
                history = self.history if history is None else history
                item = history[item]
            try:
                ids.extend(_task_ids(item))
            except ValueError:  # not a msg_id at all: unknown, as ipyparallel's hub says
                raise error.outcome_error(Outcome.NO_SUCH_TASK, f"no task {item!r}") from None
        if not ids:
            raise ValueError("resubmit needs msg_ids")
        # A task still running is sent again too, as ipyparallel does.
        found = []
        for task_id in ids:
            kept = self._history.request(task_id) or self._history.pending_request(task_id)
            if kept is None:
                found_here, _ = self._history.locate(task_id)
                if not found_here and self._records([task_id])[0]["state"] == "unknown":
                    raise error.outcome_error(Outcome.NO_SUCH_TASK, f"no task {task_id} of yours")
                raise NotImplementedError(
                    f"resubmit: the request of task {task_id} is not kept on this client (the controller keeps "
                    "results, not requests; this client keeps its apply/execute requests of up to 1 MiB, the "
                    "latest 64 MiB of them)")
            found.append(kept)
        kinds = {request.kind for request, _ in found}
        if len(kinds) > 1:
            raise ValueError("resubmit: give execute and apply tasks in separate calls")
        children, resend = [], []
        native = self._native
        for request, engine in found:
            if request.method == "apply_balanced":
                children.append(native.apply_balanced(*request.args))
            else:
                children.append(getattr(native, request.method)([engine], *request.args))
            resend.append(request)
        ar = AsyncResult(self, children, found[0][0].fname, found[0][0].kind, single=single and len(ids) == 1,
                         resend=resend, balanced=found[0][0].method == "apply_balanced")
        return ar.get() if (self.block if block is None else block) else ar

    def _records(self, ids):
        return json.loads(self._native.result_status([int(i) for i in ids]))["records"]
