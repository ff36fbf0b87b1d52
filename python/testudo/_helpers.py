"""Functions that run on engines on the client's behalf (map chunks, imports).

They are pickled by value (cloudpickle.register_pickle_by_value), so engines do not need the
testudo package installed.
"""


def map_chunk(f, *sequences):
    """Run on an engine: f over its partition of the sequences."""
    return list(map(f, *sequences))


def call_on_partition(f, *partitions):
    """Run on an engine: f once, on its whole partition of each sequence (view.parallel)."""
    return f(*partitions)
