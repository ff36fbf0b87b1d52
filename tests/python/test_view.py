"""DirectView against a real, secure local cluster of four engines. The shape follows
ipyparallel's test_view.py (push/pull, execute, apply, map, scatter/gather, sync_imports,
decorators, remote errors); the tests are our own."""

import base64
import os
import threading

import numpy as np
import pytest

import testudo
from testudo import AsyncMapResult, AsyncResult, interactive


# ----- push / pull / dict access -----


def test_push_pull(dview):
    assert dview.push({"a": 5, "b": "text", "c": [1, {"d": 2.5}]}) == [None] * 4
    assert dview.pull("a") == [5, 5, 5, 5]
    assert dview.pull("c") == [[1, {"d": 2.5}]] * 4


def test_pull_list_of_names(dview):
    dview.push(dict(a=1, b=2))
    assert dview.pull(["a", "b"]) == [[1, 2]] * 4
    assert dview.pull(("b", "a")) == [[2, 1]] * 4
    assert dview.pull(["a"]) == [[1]] * 4


def test_push_nonblocking(rc):
    view = rc[:]
    ar = view.push({"nb": 3})
    assert isinstance(ar, AsyncResult)
    assert ar.get(timeout=10) == [None] * 4
    assert view.pull("nb").get(timeout=10) == [3] * 4
    view.clear(block=True)


def test_push_and_pull_type_errors(dview):
    with pytest.raises(TypeError, match="Must be a dict, not list"):
        dview.push([("a", 1)])
    with pytest.raises(TypeError, match="keys must be str"):
        dview.push({1: "a"})
    with pytest.raises(TypeError, match="keys must be str"):
        dview.pull(["a", 2])


def test_pull_missing_name_is_remote_name_error(dview):
    with pytest.raises(testudo.CompositeError) as info:
        dview.pull("not_defined_anywhere")
    assert len(info.value.elist) == 4
    assert {e[0] for e in info.value.elist} == {"NameError"}
    assert "not_defined_anywhere" in info.value.elist[0][1]


def test_setitem_getitem_update(dview):
    dview["a"] = 5
    assert dview["a"] == [5, 5, 5, 5]
    dview.update({"b": 6})
    assert dview.get("b") == [6, 6, 6, 6]
    assert dview.get(["a", "b"]) == [[5, 6]] * 4


def test_numpy_push_pull(dview, rc):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    dview.push({"arr": a})
    assert dview.apply(interactive(lambda: (type(arr).__name__, arr.dtype.str, arr.shape, float(arr.sum())))) == \
        [("ndarray", "<f4", (3, 4), 66.0)] * 4
    back = rc[1].pull("arr", block=True)
    assert isinstance(back, np.ndarray)
    assert back.dtype == np.float32 and back.shape == (3, 4)
    np.testing.assert_array_equal(back, a)
    assert back.flags.writeable
    back[0, 0] = 100.0  # writable, and a copy of ours
    assert a[0, 0] == 0.0


def test_numpy_non_contiguous_and_larger_arrays(dview, rc):
    big = np.random.default_rng(1).integers(0, 1 << 30, size=(512, 1024), dtype=np.int64)  # 4 MiB
    transposed = big[:16, :8].T  # not C-contiguous
    dview.push({"big": big, "tr": transposed})
    sums = dview.apply(interactive(lambda: (int(big.sum()), tr.shape, tr.flags.c_contiguous or tr.flags.f_contiguous)))
    assert sums == [(int(big.sum()), (8, 16), True)] * 4
    back = rc[3].pull(["big", "tr"], block=True)
    np.testing.assert_array_equal(back[0], big)
    np.testing.assert_array_equal(back[1], transposed)
    assert back[0].flags.writeable


def test_bytes_push_pull(dview):
    blob = bytes(range(256)) * 1000
    dview.push({"blob": blob, "ba": bytearray(b"xyz")})
    assert dview.apply(interactive(lambda: (len(blob), blob[:3], ba))) == [(256000, b"\x00\x01\x02", bytearray(b"xyz"))] * 4
    assert dview.pull("blob") == [blob] * 4


# ----- execute / run -----


def test_execute_returns_async_result(dview):
    ar = dview.execute("a = 10")
    assert isinstance(ar, AsyncResult)
    assert ar.ready()
    replies = ar.get()
    assert [type(r).__name__ for r in replies] == ["ExecuteReply"] * 4
    assert [r.execute_result for r in replies] == [None] * 4
    assert dview["a"] == [10] * 4


def test_execute_reply(rc):
    # As ipyparallel's ExecuteReply: the execution count (IPython's, per engine), the
    # displayed value's mime bundle, the engine's metadata as items and attributes.
    e0 = rc[0]
    first = e0.execute("a = 10\na * 2", silent=False, block=True)
    reply = first.get()
    n = reply.execution_count
    assert n >= 1
    assert repr(reply) == str(reply) == f"<ExecuteReply[{n}]: 20>"
    assert reply.execute_result == {"data": {"text/plain": "20"}, "metadata": {}, "execution_count": n}
    assert reply.data == {"text/plain": "20"}
    assert reply.engine_id == reply["engine_id"] == 0 and reply.status == "ok"
    assert reply.msg_id == first.msg_ids[0] == reply["msg_id"]
    assert reply.metadata is first.metadata  # one dict, as in ipyparallel
    assert reply._plaintext() == f"Out[0:{n}]: 20"
    with pytest.raises(AttributeError):
        reply.no_such_key
    # silent (the default) neither counts nor displays; silent=False counts even for None.
    quiet = e0.execute("a * 3", block=True)
    assert quiet.get().execution_count == n and quiet.execute_result is None
    assert repr(quiet.get()) == f"<ExecuteReply[{n}]: >"
    none = e0.execute("None", silent=False, block=True).get()
    assert none.execution_count == n + 1 and none.execute_result is None
    # Long reprs are cut in repr(), and shown on their own line below Out[...].
    long = e0.execute("list(range(30))", silent=False, block=True).get()
    text = long.data["text/plain"]
    assert text.startswith("[0,\n 1,\n") and len(text) > 32
    assert repr(long) == f"<ExecuteReply[{n + 2}]: {text[:29]}...>"
    assert long._plaintext().startswith(f"Out[0:{n + 2}]: \n[0,\n 1,")
    # stdout and stderr of the request, as reply attributes.
    printed = e0.execute("import sys; print(5); print('w', file=sys.stderr)", silent=False, block=True).get()
    assert printed.stdout == "5\n" and printed.stderr == "w\n"


def test_execute_result_per_engine(dview):
    ar = dview.execute("b = 5\nb", silent=False)
    assert [r["data"] for r in ar.execute_result] == [{"text/plain": "5"}] * 4
    assert ar.outputs == [[]] * 4
    assert [r.data for r in ar.get()] == [{"text/plain": "5"}] * 4
    assert [r.engine_id for r in ar.get()] == [0, 1, 2, 3]
    assert dview.execute("b").execute_result == [None] * 4  # silent by default


def test_execute_reply_rich_types(rc):
    # What an IPython kernel would send: IPython's display formatter runs on the engine.
    e0 = rc[0]
    e0.execute("from IPython.display import HTML, Image", block=True)
    html = e0.execute("HTML('<b>bold</b>')", silent=False, block=True).get()
    assert html._repr_html_() == "<b>bold</b>"
    assert set(html.data) == {"text/plain", "text/html"}
    png = e0.execute("Image(data=b'garbage', format='png', width=10)", silent=False, block=True).get()
    data, metadata = png._repr_png_()
    assert data.strip() == base64.b64encode(b"garbage").decode("ascii")
    assert metadata == {"width": 10}
    assert png._repr_svg_() is None
    # IPython's pretty printer, not repr(): a set is sorted, as Out[...] shows it.
    assert e0.execute("{3, 1, 2}", silent=False, block=True).get().data == {"text/plain": "{1, 2, 3}"}


def test_execute_reply_from_the_controller(rc):
    # rc.get_result of an execute: the same ExecuteReply, decoded from the stored reply.
    ar = rc[1].execute("6 * 7", silent=False, block=True)
    again = rc.get_result(ar.msg_ids[0], block=True).get()
    assert again.execute_result == ar.get().execute_result
    assert again.data == {"text/plain": "42"} and again.engine_id == 1


def test_execute_nonblocking_and_targets(rc):
    view = rc[:]
    ar = view.execute("import time; time.sleep(0.3); e = 1")
    assert not ar.ready()
    assert [r.execute_result for r in ar.get(timeout=10)] == [None] * 4
    ar = view.execute("t = 'two'", targets=[2])
    ar.get(timeout=10)
    assert ar.targets == [2]
    assert rc[2]["t"] == "two"
    with pytest.raises(testudo.RemoteError) as info:
        rc[0].pull("t", block=True)
    assert info.value.ename == "NameError"
    view.clear(block=True)


def test_execute_type_error(dview):
    with pytest.raises(TypeError, match="code must be str, not int"):
        dview.execute(5)


def test_run_file(dview, tmp_path):
    script = tmp_path / "script.py"
    script.write_text("ran = 'yes'\nprint('ran the file')")
    ar = dview.run(str(script))
    assert ar.stdout == ["ran the file\n"] * 4
    assert dview["ran"] == ["yes"] * 4


def test_clear(dview):
    dview["gone"] = 1
    dview.clear()
    with pytest.raises(testudo.CompositeError) as info:
        dview["gone"]
    assert [e[0] for e in info.value.elist] == ["NameError"] * 4


def test_engine_stdout_and_stderr(dview):
    ar = dview.execute("import sys; print('out', 1); print('err', file=sys.stderr)")
    assert ar.stdout == ["out 1\n"] * 4
    assert ar.stderr == ["err\n"] * 4


# ----- apply -----


def test_apply_variants(dview, rc):
    def add(a, b=1):
        return a + b

    assert dview.apply(add, 1, b=2) == [3] * 4
    assert dview.apply_sync(add, 5) == [6] * 4
    ar = dview.apply_async(add, 1, 1)
    assert isinstance(ar, AsyncResult)
    assert ar.get(timeout=10) == [2] * 4
    view = rc[:]  # block=False: apply returns an AsyncResult
    ar = view.apply(add, 2, 2)
    assert isinstance(ar, AsyncResult)
    assert ar.get(timeout=10) == [4] * 4


def test_apply_closure_and_lambda(dview):
    factor = 3
    assert dview.apply(lambda x: x * factor, 2) == [6] * 4


def test_apply_not_callable(dview):
    with pytest.raises(TypeError, match="is not callable"):
        dview.apply(5)


def test_interactive_functions_use_engine_globals(dview):
    @testudo.interactive
    def get_a():
        return a  # noqa: F821 (an engine global)

    dview.push({"a": 11})
    assert dview.apply(get_a) == [11] * 4


def test_apply_reuses_a_function_pickle_only_while_the_function_is_unchanged(dview):
    import pickle

    from testudo import _view

    @testudo.interactive
    def f(x, y=1):
        return x + y + a  # noqa: F821 (an engine global)

    # An unchanged plain __main__ function travels as its own, cached pickle (bytes).
    call = pickle.loads(_view._dumps_call(f, (1,), {})[0])
    assert type(call[0]) is bytes and call[1:] == ((1,), {})
    assert _view._pickled_function(f) == call[0]
    assert _view._pickled_function(f) is _view._pickled_function(f)  # made once

    dview.push({"a": 10})
    assert dview.apply(f, 1) == [12] * 4
    dview.push({"a": 20})
    assert dview.apply(f, 1) == [22] * 4  # the engine's namespace at each call
    f.__defaults__ = (5,)
    assert dview.apply(f, 1) == [26] * 4
    f.__code__ = (lambda x, y=1: x * y * a).__code__  # noqa: F821
    assert dview.apply(f, 3) == [300] * 4
    f.tag = "attribute"  # not cached any more, still right
    assert _view._pickled_function(f) is None
    assert dview.apply(f, 2, y=2) == [80] * 4

    @testudo.interactive
    def appends(acc=[]):  # noqa: B006 (the point of the test)
        acc.append(1)
        return len(acc)

    # Mutable defaults are pickled with each call, as before: no state shared between calls.
    assert _view._pickled_function(appends) is None
    assert dview.apply(appends) == [1] * 4
    assert dview.apply(appends) == [1] * 4


def test_apply_result_not_unpicklable_here(dview):
    # An engine returns a generator: cannot be pickled there.
    with pytest.raises(testudo.CompositeError) as info:
        dview.apply(lambda: (i for i in range(3)))
    assert len(info.value.elist) == 4
    assert "generator" in str(info.value.elist[0][1])


def test_function_from_a_module_that_imports_testudo(dview, tmp_path, monkeypatch):
    # A function of an importable module travels by reference: the engines import the module,
    # and so testudo with it, into a process that already runs testudo's engine module.
    (tmp_path / "usermod_imports_testudo.py").write_text(
        "import os\nimport numpy as np\nimport testudo\n\n"
        "def where():\n    return testudo.__name__, os.getpid()\n\n"
        "def doubled(a):\n    return a * 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import usermod_imports_testudo as usermod
    dview.execute(f"import sys; sys.path.insert(0, {str(tmp_path)!r})")
    try:
        names = dview.apply(usermod.where)
        assert [n for n, _ in names] == ["testudo"] * 4
        assert len({pid for _, pid in names}) == 4
        # Received segments still reach numpy without a copy once both modules are loaded,
        # in either direction, large enough (4 MiB) to travel out of band.
        big = np.arange(1 << 19, dtype=np.float64)
        back = dview.apply(usermod.doubled, big)
        for b in back:
            np.testing.assert_array_equal(b, big * 2)
        dview.push({"big": big})
        np.testing.assert_array_equal(dview.pull("big", targets=0), big)
    finally:
        dview.execute(f"import sys; sys.path.remove({str(tmp_path)!r})")


# ----- remote errors -----


def test_remote_error_attributes(rc):
    def fail(x):
        raise ValueError(f"bad value {x}")

    with pytest.raises(testudo.RemoteError) as info:
        rc[2].apply_sync(fail, 7)
    err = info.value
    assert type(err) is testudo.RemoteError
    assert err.ename == "ValueError"
    assert err.evalue == "bad value 7"
    assert 'raise ValueError(f"bad value {x}")' in err.traceback
    assert err.traceback.rstrip().endswith("ValueError: bad value 7")
    assert err.engine_info["engine_id"] == 2
    assert err.engine_info["method"] == "fail"
    assert str(err) == "ValueError(bad value 7)"
    assert repr(err) == "<Remote[2]:ValueError(bad value 7)>"
    assert err.render_traceback() == err.traceback.splitlines()


def test_composite_error(dview):
    with pytest.raises(testudo.CompositeError) as info:
        dview.execute("x = 1\n1/0")
    err = info.value
    assert isinstance(err, testudo.RemoteError)
    assert len(err.elist) == 4
    assert [e[3]["engine_id"] for e in err.elist] == [0, 1, 2, 3]
    assert [e[0] for e in err.elist] == ["ZeroDivisionError"] * 4
    assert "1/0" in err.elist[0][2]
    assert str(err).splitlines()[:2] == ["one or more exceptions from call to method: execute",
                                         "[0:execute]: ZeroDivisionError: division by zero"]
    with pytest.raises(testudo.RemoteError) as one:
        err.raise_exception()
    assert one.value.ename == "ZeroDivisionError"
    assert one.value.engine_info["engine_id"] == 0
    with pytest.raises(testudo.RemoteError) as three:
        err.raise_exception(3)
    assert three.value.engine_info["engine_id"] == 3
    with pytest.raises(IndexError):
        err.raise_exception(4)


def test_composite_error_from_some_engines(dview):
    dview.scatter("i", [0, 1, 2, 3], flatten=True)
    ar = dview.execute("import os\nif i % 2: raise KeyError(i)", block=False)
    with pytest.raises(testudo.CompositeError) as info:
        ar.get(timeout=10)
    assert [(e[0], e[3]["engine_id"]) for e in info.value.elist] == [("KeyError", 1), ("KeyError", 3)]
    assert ar.get(timeout=10, return_exceptions=True)[0].engine_id == 0
    assert isinstance(ar.get(timeout=10, return_exceptions=True)[1], testudo.RemoteError)


def test_remote_syntax_error(dview):
    with pytest.raises(testudo.CompositeError) as info:
        dview.execute("def (")
    assert info.value.elist[0][0] == "SyntaxError"


# ----- map -----


def test_map_sync_and_async(dview, rc):
    data = list(range(10))
    assert dview.map(lambda x: x * x, data) == [x * x for x in data]
    assert dview.map_sync(lambda x: x + 1, data) == [x + 1 for x in data]
    ar = dview.map_async(lambda x: -x, data)
    assert isinstance(ar, AsyncMapResult)
    assert ar.get(timeout=10) == [-x for x in data]
    assert list(ar) == [-x for x in data]
    view = rc[:]  # non-blocking view
    ar = view.map(str, data)
    assert isinstance(ar, AsyncMapResult)
    assert ar.get(timeout=10) == [str(x) for x in data]


def test_map_several_sequences(dview):
    assert dview.map(lambda x, y: x * y, range(9), range(10, 19)) == [x * y for x, y in zip(range(9), range(10, 19))]
    # The shortest sequence wins, as with the builtin map.
    assert dview.map(lambda x, y, z: x + y + z, [1, 2, 3], [10, 20, 30, 40], (100, 200, 300, 400, 500)) == [111, 222, 333]


def test_map_more_engines_than_items(dview):
    assert dview.map(lambda x: x * 10, [1, 2]) == [10, 20]
    assert dview.map(lambda x: x, []) == []


def test_map_distributes_blocks(dview):
    def where(x):
        import os
        return os.getpid()

    pids = dview.apply(os.getpid)
    assert dview.map(where, range(10)) == [pids[0]] * 3 + [pids[1]] * 3 + [pids[2]] * 2 + [pids[3]] * 2


def test_map_numpy_array(dview):
    arr = np.arange(8.0)
    assert dview.map(lambda x: float(x) * 2, arr) == [x * 2 for x in arr.tolist()]


def test_map_remote_error(dview):
    def inv(x):
        return 1 / x

    with pytest.raises(testudo.CompositeError) as info:
        dview.map(inv, [1, 2, 0, 4])
    assert [(e[0], e[3]["engine_id"]) for e in info.value.elist] == [("ZeroDivisionError", 2)]


# ----- scatter / gather -----


def test_scatter_gather_roundtrip(dview):
    seq = list(range(10))
    assert dview.scatter("s", seq) is None
    assert dview["s"] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    assert dview.gather("s") == seq


def test_scatter_gather_nonblocking(rc):
    view = rc[:]
    ar = view.scatter("s", list(range(7)))
    assert isinstance(ar, AsyncResult)
    ar.get(timeout=10)
    gathered = view.gather("s")
    assert isinstance(gathered, AsyncMapResult)
    assert gathered.get(timeout=10) == list(range(7))
    view.clear(block=True)


def test_scatter_flatten(dview):
    dview.scatter("x", [10, 20, 30, 40], flatten=True)
    assert dview["x"] == [10, 20, 30, 40]
    dview.scatter("y", [10, 20, 30, 40])
    assert dview["y"] == [[10], [20], [30], [40]]
    assert dview.gather("x") == [10, 20, 30, 40]
    assert dview.gather("y") == [10, 20, 30, 40]


def test_scatter_gather_numpy(dview):
    local = np.arange(10.0)
    dview.scatter("a", local)
    assert dview.apply(interactive(lambda: (type(a).__name__, len(a)))) == \
        [("ndarray", 3), ("ndarray", 3), ("ndarray", 2), ("ndarray", 2)]
    gathered = dview.gather("a")
    assert isinstance(gathered, np.ndarray) and np.array_equal(gathered, local)  # as ipyparallel


def test_scatter_on_subset(rc):
    view = rc[[1, 3]]
    view.block = True
    view.scatter("part", "abcde")
    assert view["part"] == ["abc", "de"]
    assert view.gather("part") == list("abcde")
    rc[:].clear(block=True)


# ----- imports, decorators, flags -----


def test_sync_imports(dview, capsys):
    with dview.sync_imports():
        import fractions  # noqa: F401
    assert capsys.readouterr().out == "importing fractions on engine(s)\n"

    def half():
        return str(fractions.Fraction(1, 2))  # noqa: F821 (imported on the engines)

    assert dview.apply(testudo.interactive(half)) == ["1/2"] * 4


def test_sync_imports_from_and_quiet(dview, capsys):
    with dview.sync_imports(quiet=True):
        from decimal import Decimal  # noqa: F401
    assert capsys.readouterr().out == ""
    with dview.sync_imports():
        from decimal import Decimal, getcontext  # noqa: F401
        import fractions  # noqa: F401
        import fractions  # noqa: F401,F811 (once is enough)
    assert capsys.readouterr().out == ("importing Decimal,getcontext from decimal on engine(s)\n"
                                       "importing fractions on engine(s)\n")
    assert dview.execute("d = str(Decimal('1.5') * 2)").execute_result == [None] * 4
    assert dview["d"] == ["3.0"] * 4


def test_remote_decorator(rc):
    view = rc[:]

    @view.remote(block=True)
    def getpid():
        import os
        return os.getpid()

    pids = getpid()
    assert isinstance(pids, list) and len(set(pids)) == 4
    assert getpid.__name__ == "getpid"

    @view.remote(block=False)
    def double(x):
        return x * 2

    ar = double(4)
    assert isinstance(ar, AsyncResult)
    assert ar.get(timeout=10) == [8] * 4

    @rc[3].remote(block=True)
    def three():
        return "on three"

    assert three() == "on three"


def test_parallel_decorator(rc):
    view = rc[:]

    @view.parallel(block=True)
    def total(part):
        return [sum(part)]

    assert total(list(range(10))) == [0 + 1 + 2, 3 + 4 + 5, 6 + 7, 8 + 9]

    @view.parallel(block=False)
    def square(x):
        return x * x

    ar = square.map(range(6))
    assert isinstance(ar, AsyncMapResult)
    assert ar.get(timeout=10) == [0, 1, 4, 9, 16, 25]

    @view.parallel(block=True)
    def lengths(part):
        return [len(part)]

    assert lengths("abcdefg") == [2, 2, 2, 1]


def test_flags(rc):
    view = rc[:]
    assert view.block is False
    with view.temp_flags(block=True):
        assert view.block is True
        assert view.apply(lambda: 1) == [1] * 4
    assert view.block is False
    view.set_flags(block=True)
    assert view.apply(lambda: 2) == [2] * 4
    with pytest.raises(KeyError, match="invalid flag"):
        view.set_flags(nonsense=True)


# ----- ipyparallel's message tracking and serializer switches -----


def test_track_says_when_sent_buffers_may_change(rc):
    # Arrays go out from their own memory: ar.sent says when they may be changed again.
    a = np.arange(1_000_000, dtype=np.float64)
    ar = rc[:].push({"tracked": a}, block=False, track=True)
    ar.wait_for_send(timeout=10)
    assert ar.sent and ar.ready()
    a[:] = -1
    assert (rc[3].pull("tracked", block=True) == np.arange(1_000_000, dtype=np.float64)).all()
    slow = rc[0].apply_async(__import__("time").sleep, 0.5)
    assert slow.sent is False
    with pytest.raises(TimeoutError):
        slow.wait_for_send(timeout=0.05)
    slow.wait_for_send()
    assert slow.sent
    # The flag itself is taken wherever ipyparallel takes it.
    rc[:].set_flags(track=True)
    assert rc[:].map_sync(abs, [-1, -2], track=True) == [1, 2]
    assert rc[:].scatter("part", list(range(8)), track=True, block=True) is None
    lview = rc.load_balanced_view()
    lview.set_flags(track=True)
    assert lview.track is True and lview.apply_sync(abs, -3) == 3
    assert lview.map_sync(abs, [-4], track=True) == [4]


def test_use_dill_use_pickle_use_cloudpickle(rc):
    pytest.importorskip("dill")
    lock = threading.Lock()
    # cloudpickle (the default) cannot pickle a lock; dill can (as a new lock).
    with pytest.raises(TypeError, match="lock"):
        rc[0].apply_async(repr, lock)
    try:
        assert rc[:].use_dill().get(timeout=10) == [None] * 4  # the engines import dill
        assert rc[0].apply_sync(repr, lock).startswith("<unlocked _thread.lock object")
        # testudo's own helpers still travel by value: map works as before.
        assert rc[:].map_sync(abs, [-1, -2, -3, -4, -5]) == [1, 2, 3, 4, 5]
        assert rc.load_balanced_view().map_sync(abs, [-6, -7]) == [6, 7]
        assert rc[:].apply_sync(divmod, 7, 2) == [(3, 1)] * 4
    finally:
        testudo.use_pickle()  # back to the default, cloudpickle
    with pytest.raises(TypeError, match="lock"):
        rc[0].apply_async(repr, lock)
    testudo.use_dill()
    assert rc[0].apply_sync(repr, lock).startswith("<unlocked _thread.lock object")
    assert rc[0].use_cloudpickle().get(timeout=10) is None
    with pytest.raises(TypeError, match="lock"):
        rc[0].apply_async(repr, lock)
