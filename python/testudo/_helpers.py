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


def lookup_reference(expr):
    """Run on an engine while a request's arguments are unpickled (testudo.Reference): `expr`
    evaluated in the engine's namespace, as ipyparallel's Reference.get_object."""
    import sys
    engine = sys.modules.get("_testudo_engine")  # the engine's helper module; it holds the namespace
    if engine is None:
        raise RuntimeError(f"testudo.Reference({expr!r}) is resolved only on an engine, "
                           "as an argument of apply/map; it cannot come back to the client")
    return eval(expr, engine._ns)
