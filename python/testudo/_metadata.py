"""ipyparallel's per-engine metadata of a result (msg_id, engine_id, the times, stdout, stderr,
status ...): times kept as seconds since 1970 become timezone-aware UTC datetimes here."""

import datetime

_UTC = datetime.timezone.utc


def stamp(seconds):
    """A time kept as seconds since 1970 (0 or None: not yet) as ipyparallel gives its metadata
    times: a timezone-aware UTC datetime, or None."""
    return datetime.datetime.fromtimestamp(seconds, _UTC) if seconds else None


def pending_metadata(msg_id, engine_id, submitted):
    """The metadata of a task with no reply yet (`submitted`: seconds since 1970; `msg_id`:
    None leaves it out, for a request the controller may not have acknowledged yet)."""
    md = Metadata(msg_id=msg_id, engine_id=engine_id, submitted=stamp(submitted), started=None,
                  completed=None, received=None, stdout="", stderr="", status="pending", error=None,
                  execute_result=None, outputs=[], data={})
    if msg_id is None:
        del md["msg_id"]
    return md


# Metadata keys read as attributes of an AsyncResult (ar.submitted), as ipyparallel's; the
# others (stdout, engine_id, data...) are properties.
METADATA_ATTRIBUTES = frozenset(("submitted", "started", "completed", "received", "status", "error"))


class Metadata(dict):
    """One engine's metadata; keys are attributes too (ar.metadata[0].engine_id)."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


def outcome_metadata(outcome, submitted, received):
    """ipyparallel's metadata keys for one engine's reply (engine_id, task_id, ok, started,
    completed, stdout, stderr, ...); `submitted` and `received` are seconds since 1970."""
    engine_id, task_id, ok, started, completed, stdout, stderr = outcome[:7]
    return Metadata(
        msg_id=str(task_id), engine_id=engine_id, submitted=stamp(submitted),
        started=stamp(started), completed=stamp(completed), received=stamp(received),
        stdout=stdout, stderr=stderr, status="ok" if ok else "error", error=None,
        execute_result=None, outputs=[], data={})
