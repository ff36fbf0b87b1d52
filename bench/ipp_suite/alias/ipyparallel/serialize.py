"""ipyparallel.serialize.can/uncan as a test uses them: what a function becomes after the trip to
an engine. testudo sends it with cloudpickle; `namespace` (ipyparallel's engine namespace for
@interactive functions) has no counterpart and is ignored."""

import cloudpickle


def can(obj):
    return cloudpickle.dumps(obj)


def uncan(canned, namespace=None):
    return cloudpickle.loads(canned)
