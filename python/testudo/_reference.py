"""testudo.Reference: a name (or expression) evaluated in the engine's namespace when passed as
an argument, as ipyparallel's Reference."""

from . import _helpers


class Reference:
    """`view.apply(f, Reference('a'))` calls f with the engine's own `a`, not a copy of a
    client value. `name` may be any expression (`'a[0]'`, `'a.b'`), evaluated on the engine."""

    def __init__(self, name):
        if not isinstance(name, str):
            raise TypeError(f"illegal name: {name!r}")
        self.name = name

    def __repr__(self):
        return f"<Reference: {self.name!r}>"

    def __reduce__(self):
        # Resolved while the engine unpickles the request; _helpers travel by value with
        # cloudpickle, so the engine needs no testudo package.
        return (_helpers.lookup_reference, (self.name,))
