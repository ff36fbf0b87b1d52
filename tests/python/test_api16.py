"""ipyparallel 7.1 API that testudo adds in pure Python (issue 16): len(view), ar['engine_id'] /
ar.engine_id, LoadBalancedView.imap, and the remote / parallel decorators on both views and at
module level, and testudo.Reference. Our own tests against a real cluster; the behaviour compared is ipyparallel's
(client/view.py, client/remotefunction.py, client/asyncresult.py)."""

import itertools
import os
import time

import pytest

import testudo
from testudo import AsyncMapResult, AsyncResult, error


@testudo.interactive  # travels by value: engines cannot import this test module
def pid_of(x):
    import os
    return os.getpid()


@testudo.interactive
def slow_square(x):
    import time
    time.sleep(0.3 if x == 0 else 0.0)
    return x * x


def test_len_view(rc):
    assert len(rc[:]) == 4
    assert len(rc[1:3]) == 2
    assert len(rc[2]) == 1
    assert len(rc.load_balanced_view()) == 4  # targets None: every engine of the client
    assert len(rc.load_balanced_view([0, 3])) == 2
    assert len(rc.load_balanced_view(1)) == 1


def test_engine_id(rc):
    ar = rc[2].apply_async(os.getpid)
    ar.get(timeout=10)
    assert ar.engine_id == rc.ids[2] == ar["engine_id"]
    ar = rc[:].apply_async(os.getpid)
    ar.get(timeout=10)
    assert ar.engine_id == list(rc.ids) == ar["engine_id"]
    lb = rc.load_balanced_view()
    ar = lb.apply_async(pid_of, 0)
    pid = ar.get(timeout=10)
    assert ar.engine_id in rc.ids
    assert rc[ar.engine_id].apply_sync(os.getpid) == pid  # the engine that really ran it
    assert ar["status"] == "ok"
    with pytest.raises(KeyError):
        ar["no such key"]
    with pytest.raises(TypeError):
        ar[1.5]


def test_engine_id_before_done(rc):
    ar = rc.load_balanced_view().apply_async(time.sleep, 0.5)
    assert ar["engine_id"] is None  # no waiting: the scheduler has not said where yet
    ar.get(timeout=10)
    assert ar["engine_id"] in rc.ids
    ar = rc[1].apply_async(time.sleep, 0.5)
    assert ar.engine_id == rc.ids[1]  # a direct request knows its engine at once


def test_getitem_result(rc):
    ar = rc[:].apply_async(lambda: 7)
    ar.get(timeout=10)
    assert ar[0] == 7 and ar[1:3] == [7, 7]
    # Indexable now, an AsyncResult is still mapped over as its results, not its engines.
    squares = rc[:].map_async(lambda x: x * x, range(10))
    assert rc[:].map_sync(lambda x: x + 1, squares) == [x * x + 1 for x in range(10)]
    assert rc.load_balanced_view().map_sync(lambda x: x + 1, squares) == [x * x + 1 for x in range(10)]
    pending = rc[0].apply_async(time.sleep, 0.5)
    with pytest.raises(error.TimeoutError):
        pending[0]
    pending.get(timeout=10)


def test_imap_ordered(rc):
    lb = rc.load_balanced_view()
    it = lb.imap(slow_square, range(8))
    assert not isinstance(it, (list, AsyncResult))
    assert list(it) == [x * x for x in range(8)]
    assert list(lb.imap(lambda a, b: a + b, [1, 2, 3], [10, 20, 30, 40])) == [11, 22, 33]


def test_imap_unordered(rc):
    lb = rc.load_balanced_view()
    out = list(lb.imap(slow_square, range(8), ordered=False))
    assert sorted(out) == [x * x for x in range(8)]
    assert out[-1] == 0  # the slow first item comes last


def test_imap_lazy_and_infinite(rc):
    lb = rc.load_balanced_view()
    taken = []

    def numbers():
        for i in itertools.count():
            taken.append(i)
            yield i

    it = lb.imap(lambda x: x + 1, numbers(), max_outstanding=2)
    assert taken == []  # nothing is read before the first next()
    assert [next(it) for _ in range(5)] == [1, 2, 3, 4, 5]
    # Read ahead is bounded: at most 2 unfinished tasks at once (finished, not yet yielded
    # results do not count, as in ipyparallel), so a few items, not the endless generator.
    assert len(taken) < 20
    it.close()


def test_imap_errors(rc):
    lb = rc.load_balanced_view()
    with pytest.raises(error.RemoteError):
        list(lb.imap(lambda x: 1 // x, [1, 0, 2]))
    out = list(lb.imap(lambda x: 1 // x, [1, 0, 2], return_exceptions=True))
    assert out[0] == 1 and out[2] == 0 and isinstance(out[1], error.RemoteError)
    with pytest.raises(ValueError):
        lb.imap(abs, [1], max_outstanding=-1)
    with pytest.raises(ValueError):
        lb.imap(abs)


def test_lbview_remote_and_parallel(rc):
    lb = rc.load_balanced_view()

    @lb.remote(block=True)
    def where():
        import os
        return os.getpid()

    assert isinstance(where(), int)

    @lb.parallel(block=True)
    def lengths(part):
        return [len(part)]

    assert lengths(list(range(5))) == [1] * 5  # one task per element, as ipyparallel

    @lb.parallel(block=False)
    def double(x):
        return 2 * x

    ar = double.map(range(6))
    assert isinstance(ar, AsyncMapResult) and ar.get(timeout=10) == [0, 2, 4, 6, 8, 10]


def test_module_level_decorators(rc):
    dv = rc[:]

    @testudo.remote(dv, block=True)
    def one():
        return 1

    assert isinstance(one, testudo.RemoteFunction) and one() == [1] * 4

    @testudo.parallel(dv, block=True)
    def total(part):
        return [sum(part)]

    assert isinstance(total, testudo.ParallelFunction)
    assert total(list(range(8))) == [1, 5, 9, 13]
    assert testudo.RemoteFunction(dv, abs, block=True)(-3) == [3] * 4


def test_decorator_flags(rc):
    lb = rc.load_balanced_view()

    @lb.remote(block=True, targets=[rc.ids[3]])
    def where():
        import os
        return os.getpid()

    assert where() == rc[3].apply_sync(os.getpid)  # the flag applies to each call
    assert lb.targets is None  # ... and only then
    with pytest.raises(KeyError):
        rc[:].remote(no_such_flag=1)  # said at decoration, not ignored
    with pytest.raises(ValueError):
        rc[:].parallel(dist="r")


def test_reference(rc, dview):
    dview.push({"a": 5})
    dview.execute("import os; pid = os.getpid(); seq = [10, 20]")
    ref = testudo.Reference("a")
    assert repr(ref) == "<Reference: 'a'>"
    assert dview.apply_sync(lambda x: x * 2, ref) == [10] * 4
    assert dview.apply_sync(lambda x: x, testudo.Reference("seq[1]")) == [20] * 4  # an expression
    assert rc[2].apply_sync(lambda p: p, p=testudo.Reference("pid")) == rc[2].apply_sync(os.getpid)
    lb = rc.load_balanced_view()
    assert lb.apply_sync(lambda x: x + 1, ref) == 6
    with pytest.raises(error.RemoteError) as info:
        dview.apply_sync(lambda x: x, testudo.Reference("not_defined_here"))
    assert "NameError" in str(info.value)
    with pytest.raises(TypeError):
        testudo.Reference(3)
    import cloudpickle
    with pytest.raises(RuntimeError, match="only on an engine"):
        cloudpickle.loads(cloudpickle.dumps(ref))  # said clearly where it cannot be resolved
