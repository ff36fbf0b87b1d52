"""rc.results and rc.metadata: ipyparallel's dicts by msg_id, over this client's history.

ipyparallel's client keeps every result it received until purge_local_results. testudo's
AsyncResults let go of their values once nobody holds them (see _history); the controller
keeps every result, so a value no longer here is read back from it, and the maps answer for
every msg_id of rc.history that purge_local_results has not dropped: results for finished
tasks, metadata for all.
"""

from collections.abc import Mapping

from ._metadata import pending_metadata


def _one_task_id(key):
    from ._lbview import _task_ids
    if not isinstance(key, (str, int)) or isinstance(key, bool):
        raise KeyError(key)
    try:
        ids = _task_ids(key)
    except ValueError:
        raise KeyError(key) from None
    return ids[0]


class _ByMsgId(Mapping):
    """A read-only map msg_id (str) -> value, over the client's history."""

    def __init__(self, client):
        self._client = client

    def _locate(self, key):
        """(task id, the AsyncResult holding it or None); KeyError when not this client's or purged."""
        task_id = _one_task_id(key)
        if task_id in self._client._purged_local:
            raise KeyError(key)
        found, ar = self._client._history.locate(task_id)
        if not found:
            raise KeyError(key)
        return task_id, ar

    def _finished_ids(self):
        """msg_ids (int) of finished requests, in submission order, without asking the controller."""
        purged = self._client._purged_local
        out = []
        for ids, ar in self._client._history.entries():
            if ar is None or ar.ready():
                out.extend(i for i in ids if i not in purged)
        return out

    def _stored(self, task_id, key):
        """The controller's AsyncResult for a finished task no longer held here."""
        if self._client._records([task_id])[0]["state"] == "unknown":
            raise KeyError(key)  # purged from the controller too
        try:
            ar = self._client.get_result(str(task_id), block=False)
        except (KeyError, ValueError):
            raise KeyError(key) from None
        ar.wait()  # finished: the controller answers at once
        return ar

    def __repr__(self):
        return f"{type(self).__name__}({dict(self)!r})"


class Results(_ByMsgId):
    """rc.results: msg_id -> the value (or the RemoteError) of each finished task."""

    def __getitem__(self, key):
        task_id, ar = self._locate(key)
        if ar is None:
            return self._stored(task_id, key).get(return_exceptions=True)
        if not ar.ready():
            raise KeyError(key)  # not finished: not in results yet, as in ipyparallel
        return ar._raw[ar._task_ids().index(task_id)]

    def __iter__(self):
        return (str(i) for i in self._finished_ids())

    def __len__(self):
        return len(self._finished_ids())


class Metadata(_ByMsgId):
    """rc.metadata: msg_id -> the task's metadata (submitted, started, completed, engine_id,
    status, stdout, stderr...), for finished and pending tasks."""

    def __getitem__(self, key):
        task_id, ar = self._locate(key)
        if ar is None:
            md = self._stored(task_id, key).metadata
            return md if isinstance(md, dict) else md[0]
        position = ar._task_ids().index(task_id)
        if ar.ready():
            return ar._metadata_list()[position]
        targets = ar.targets
        return pending_metadata(str(task_id), targets[position] if position < len(targets) else None,
                                 ar._submitted)

    def __iter__(self):
        purged = self._client._purged_local
        return (str(i) for i in self._client._history.task_ids() if i not in purged)

    def __len__(self):
        return sum(1 for _ in self)


def purge_local(client, jobs, targets):
    """purge_local_results: the msg_ids (int) dropped. Raises RuntimeError for unfinished ones."""
    from ._lbview import _task_ids
    history = client._history
    if isinstance(jobs, str) and jobs == "all":
        if client.outstanding:
            raise RuntimeError(f"can't purge outstanding tasks: {sorted(client.outstanding)}")
        ids = set(history.task_ids())
    else:
        ids = set(_task_ids(jobs))
        if targets:
            engines = set(client._build_targets(targets))
            mine = history.task_ids()
            ids.update(int(r["msg_id"]) for r in client.db_query({"msg_id": {"$in": mine}}, keys=["engine_id"])
                       if r.get("engine_id") in engines)
        still = {str(i) for i in ids} & client.outstanding
        if still:
            raise RuntimeError(f"can't purge outstanding tasks: {sorted(still)}")
    client._purged_local.update(ids)
    history.forget_results()
    return ids

