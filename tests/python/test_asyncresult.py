"""AsyncResult against a real, secure local cluster: waiting, timeouts, metadata, output,
progress, and concurrent.futures/asyncio compatibility. The shape follows ipyparallel's
test_asyncresult.py; the tests are our own."""

import asyncio
import concurrent.futures
import contextlib
import datetime
import re
import sys
import threading
import time

import pytest

import testudo
from testudo import AsyncMapResult, AsyncResult
from conftest import wait_until


@testudo.interactive  # travels by value: engines cannot import this test module
def sleep_then(seconds, value):
    import time
    time.sleep(seconds)
    return value


def test_is_a_future(rc):
    ar = rc[:].apply_async(lambda: 1)
    assert isinstance(ar, concurrent.futures.Future)
    assert isinstance(ar, AsyncResult)
    assert ar.result(timeout=10) == [1, 1, 1, 1]
    assert ar.done()
    assert ar.exception() is None


def test_ready_wait_successful(rc):
    ar = rc[:].apply_async(sleep_then, 0.5, "done")
    assert ar.ready() is False
    assert ar.done() is False
    with pytest.raises(AssertionError):
        ar.successful()
    t0 = time.monotonic()
    assert ar.wait(0.05) is False
    assert time.monotonic() - t0 < 0.4
    assert ar.wait() is True
    assert ar.ready() is True
    assert ar.successful() is True
    assert ar.get() == ["done"] * 4
    assert ar.wait(0) is True


def test_unsuccessful(rc):
    ar = rc[:].apply_async(lambda: 1 / 0)
    assert ar.wait(10) is True
    assert ar.successful() is False
    exc = ar.exception()
    assert isinstance(exc, testudo.CompositeError)
    assert len(exc.elist) == 4


def test_get_timeout_then_success(rc):
    ar = rc[0].execute("import time; time.sleep(5); late = 'value'")
    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        ar.get(timeout=0.1)
    assert time.monotonic() - t0 < 2
    assert isinstance(info.value, testudo.TimeoutError)
    assert str(info.value) == "Result not ready."
    assert not ar.ready()
    assert ar.get(timeout=10).execute_result is None
    assert rc[0].pull("late", block=True) == "value"
    rc[:].clear(block=True)


def test_result_timeout_is_futures_timeout(rc):
    ar = rc[1].apply_async(sleep_then, 0.5, 1)
    with pytest.raises(concurrent.futures.TimeoutError):
        ar.result(timeout=0.05)
    assert ar.result(timeout=10) == 1


def test_single_engine_get_is_bare(rc):
    ar = rc[3].apply_async(lambda: "three")
    assert ar.get(timeout=10) == "three"
    assert ar.get_dict() == {3: "three"}
    assert list(ar) == ["three"]
    assert len(ar) == 1


def test_get_dict(rc):
    ar = rc[[0, 2]].apply_async(lambda: "x")
    assert ar.get_dict(timeout=10) == {0: "x", 2: "x"}
    assert ar.result_dict == {0: "x", 2: "x"}


def test_msg_ids_and_targets(rc):
    ar = rc[:].apply_async(lambda: 1)
    ar.get(timeout=10)
    assert len(ar.msg_ids) == 4
    assert len(set(ar.msg_ids)) == 4
    assert all(isinstance(m, str) for m in ar.msg_ids)
    assert ar.targets == [0, 1, 2, 3]
    mar = rc[:].map_async(lambda x: x, range(8))
    mar.get(timeout=10)
    assert len(mar.msg_ids) == 4 and len(set(mar.msg_ids) | set(ar.msg_ids)) == 8


def test_metadata(rc):
    before = time.time()
    ar = rc[:].execute("import sys, time; time.sleep(0.1); print('hello'); print('oops', file=sys.stderr)")
    pending = ar.metadata
    assert [m["status"] for m in pending] == ["pending"] * 4
    ar.get(timeout=10)
    after = time.time()
    md = ar.metadata
    assert len(md) == 4
    assert [m["engine_id"] for m in md] == [0, 1, 2, 3]
    for m in md:
        for key in ("submitted", "started", "completed", "received"):
            assert isinstance(m[key], datetime.datetime), key  # as ipyparallel's: aware, UTC
            assert m[key].tzinfo is datetime.timezone.utc, key
        t = {key: m[key].timestamp() for key in ("submitted", "started", "completed", "received")}
        assert before <= t["submitted"] <= t["started"] + 0.05  # clocks of one machine
        assert t["started"] <= t["completed"] <= after + 0.05
        assert (m["completed"] - m["started"]).total_seconds() >= 0.09
        assert t["submitted"] <= t["received"] <= after
        assert m["stdout"] == "hello\n"
        assert m["stderr"] == "oops\n"
        assert m["status"] == "ok"
        assert m.engine_id == m["engine_id"]  # attribute access too
    single = rc[2].execute("x = 1")
    single.get(timeout=10)
    assert single.metadata["engine_id"] == 2
    assert single.metadata.status == "ok"


def test_metadata_of_failure(rc):
    ar = rc[[1]].apply_async(lambda: 1 / 0)
    assert ar.wait(10)
    m = ar.metadata[0]
    assert m["status"] == "error"
    assert m["error"].ename == "ZeroDivisionError"


def test_elapsed_and_wall_time(rc):
    ar = rc[:].apply_async(sleep_then, 0.3, None)
    with pytest.raises(TimeoutError):
        ar.wall_time
    assert 0 <= ar.elapsed < 0.3
    ar.get(timeout=10)
    assert 0.3 <= ar.wall_time < 3
    assert ar.wall_time <= ar.elapsed < 3
    frozen = ar.elapsed
    time.sleep(0.05)
    assert ar.elapsed == frozen
    assert 4 * 0.3 <= ar.serial_time < 4 * 3


def test_stdout_stderr_properties(rc):
    ar = rc[:].execute("print(7 * 6)")
    ar.get(timeout=10)
    assert ar.stdout == ["42\n"] * 4
    assert ar.stderr == [""] * 4
    one = rc[1].execute("print('only one')")
    one.get(timeout=10)
    assert one.stdout == "only one\n"


def test_display_outputs(rc, capsys):
    ar = rc[:].execute("import sys\nprint('out', 1)\nprint('err', file=sys.stderr)")
    ar.get(timeout=10)
    capsys.readouterr()
    ar.display_outputs()
    captured = capsys.readouterr()
    # As ipyparallel: each engine's header on its own line, every stdout before any stderr.
    assert captured.out == "".join(f"[stdout:{i}] \nout 1\n" for i in range(4))
    assert captured.err == "".join(f"[stderr:{i}] \nerr\n" for i in range(4))
    ar.display_outputs("order")
    assert capsys.readouterr() == captured
    pending = rc[0].execute("import time; time.sleep(0.5)")
    with pytest.raises(TimeoutError):
        pending.display_outputs()
    pending.get(timeout=10)


def test_display_outputs_grouped_by_engine(rc, capsys):
    ar = rc[:].execute("import sys\nprint('out', 1)\nprint('err', file=sys.stderr)")
    ar.get(timeout=10)
    capsys.readouterr()
    with contextlib.redirect_stderr(sys.stdout):  # one stream, to see the order
        ar.display_outputs("engine")
    assert capsys.readouterr().out == "".join(f"[stdout:{i}] \nout 1\n[stderr:{i}] \nerr\n" for i in range(4))
    with pytest.raises(ValueError, match="groupby"):
        ar.display_outputs("bogus")


def test_display_outputs_single_engine_and_empty_streams(rc, capsys):
    one = rc[2].execute("print(5555, end='')")
    one.get(timeout=10)
    capsys.readouterr()
    one.display_outputs()
    assert capsys.readouterr().out == "5555"  # one engine: no header, text as it is
    in_a_list = rc[[2]].execute("print('listed')")
    in_a_list.get(timeout=10)
    in_a_list.display_outputs()
    assert capsys.readouterr().out == "[stdout:2] \nlisted\n"  # a list of one is not single
    # Text without a final newline: the next header starts on a line of its own.
    ragged = rc[:2].execute("print('x', end='')")
    ragged.get(timeout=10)
    ragged.display_outputs()
    assert capsys.readouterr().out == "[stdout:0] \nx\n[stdout:1] \nx"
    quiet = rc[:].execute("a = 5")
    quiet.get(timeout=10)
    quiet.display_outputs()
    assert capsys.readouterr() == ("", "")
    # result_only: no streams (and execute results are shown only inside IPython).
    ar = rc[:].execute("print('hidden')\n1", silent=False)
    ar.get(timeout=10)
    ar.display_outputs(result_only=True)
    assert "hidden" not in capsys.readouterr().out


def test_wait_interactive(rc, capsys):
    ar = rc[:].apply_async(sleep_then, 0.3, None)
    ar.wait_interactive(interval=0.05)
    out = capsys.readouterr().err  # a progress bar on stderr, redrawn in place
    assert ar.ready()
    assert re.fullmatch(r"\rsleep_then: \|#{20}\| 100%    4/4 tasks finished after    [01] s *\ndone\n",
                        out[out.rindex("\r"):])
    assert "|--------------------|   0%    0/4 tasks finished" in out  # shown while waiting
    assert out.count("\r") >= 2


def test_wait_interactive_timeout(rc, capsys):
    ar = rc[0].apply_async(sleep_then, 1, None)
    t0 = time.monotonic()
    ar.wait_interactive(interval=0.05, timeout=0.2)
    assert time.monotonic() - t0 < 0.9
    assert not ar.ready()
    err = capsys.readouterr().err
    assert "0/1 tasks finished" in err and not err.endswith("done\n")
    ar.get(timeout=10)


def test_add_done_callback_fires_without_get(rc):
    seen = []
    ar = rc[:].apply_async(sleep_then, 0.2, "cb")
    ar.add_done_callback(lambda f: seen.append((threading.current_thread().name, f.result())))
    assert seen == []
    assert wait_until(lambda: len(seen) == 1, timeout=10)
    assert seen[0][1] == ["cb"] * 4
    # Added after completion: called at once.
    ar.add_done_callback(lambda f: seen.append(("late", f.result())))
    assert seen[1] == ("late", ["cb"] * 4)


def test_done_callback_sees_errors(rc):
    seen = []
    ar = rc[0].apply_async(lambda: {}["missing"])
    ar.add_done_callback(lambda f: seen.append(f.exception()))
    assert wait_until(lambda: seen, timeout=10)
    assert isinstance(seen[0], testudo.RemoteError)
    assert seen[0].ename == "KeyError"


def test_asyncio_wrap_future(rc):
    async def main():
        ar = rc[:].apply_async(sleep_then, 0.1, "async")
        one = rc[2].apply_async(sleep_then, 0.1, 2)
        both = await asyncio.gather(asyncio.wrap_future(ar), asyncio.wrap_future(one))
        return both

    assert asyncio.run(asyncio.wait_for(main(), 10)) == [["async"] * 4, 2]


def test_asyncio_wrap_future_error(rc):
    async def main():
        return await asyncio.wrap_future(rc[1].apply_async(lambda: int("x")))

    with pytest.raises(testudo.RemoteError) as info:
        asyncio.run(asyncio.wait_for(main(), 10))
    assert info.value.ename == "ValueError"
    assert info.value.engine_info["engine_id"] == 1


def test_concurrent_futures_wait(rc):
    fast = rc[0].apply_async(sleep_then, 0, "fast")
    slow = rc[1].apply_async(sleep_then, 0.8, "slow")
    mapped = rc[2:].map_async(lambda x: x + 1, [1, 2])
    done, not_done = concurrent.futures.wait([fast, slow, mapped], timeout=0.4)
    assert done == {fast, mapped}
    assert not_done == {slow}
    assert mapped.result() == [2, 3]
    done, not_done = concurrent.futures.wait([fast, slow], return_when=concurrent.futures.ALL_COMPLETED, timeout=10)
    assert done == {fast, slow} and not not_done
    assert [f.result() for f in concurrent.futures.as_completed([slow, fast], timeout=10)] in (
        ["fast", "slow"], ["slow", "fast"])


def test_unwatched_results_complete_for_every_kind_of_waiter(rc):
    # Results finish in whichever thread looks at them, or in the dispatcher when something
    # outside watches them: each waiter kind must see completion without a get() first.
    slow = rc[0].apply_async(sleep_then, 0.5, "slow")
    quick = rc[1].apply_async(sleep_then, 0, "quick")
    done, _ = concurrent.futures.wait([slow, quick], return_when=concurrent.futures.FIRST_COMPLETED, timeout=10)
    assert quick in done
    order = [f.result() for f in concurrent.futures.as_completed([rc[2].apply_async(sleep_then, 0.3, "b"),
                                                                  rc[3].apply_async(sleep_then, 0, "a")], timeout=10)]
    assert order == ["a", "b"]
    fired = threading.Event()
    late = rc[0].apply_async(sleep_then, 0.2, "late")
    late.add_done_callback(lambda f: fired.set())
    assert fired.wait(10), "a callback on a result nobody get()s never fired"
    # Fire-and-forget results do not accumulate as outstanding once their replies are in.
    for _ in range(200):
        rc[0].apply_async(sleep_then, 0, None)
    rc.wait(timeout=30)
    assert len(rc.outstanding) == 0


def test_future_protocol_on_finished_and_pending_results(rc):
    # A result finished natively but never looked at, then seen only through Future's API.
    ar = rc[0].apply_async(sleep_then, 0, "x")
    assert wait_until(lambda: ar._children[0].ready(), timeout=10)
    assert [f.result() for f in concurrent.futures.as_completed([ar], timeout=10)] == ["x"]
    assert ar.done() and not ar.cancelled() and not ar.running() and ar.exception() is None
    # result/exception with a timeout raise TimeoutError once, without waiting twice.
    slow = rc[1].apply_async(sleep_then, 1.0, "slow")
    t0 = time.monotonic()
    with pytest.raises(concurrent.futures.TimeoutError):
        slow.result(timeout=0.1)
    with pytest.raises(concurrent.futures.TimeoutError):
        slow.exception(timeout=0.1)
    assert time.monotonic() - t0 < 0.9
    assert slow.result(timeout=10) == "slow"


def test_cancel_before_completion(rc):
    ar = rc[0].apply_async(sleep_then, 0.3, "late")
    assert ar.cancel() and ar.cancelled() and ar.done()
    with pytest.raises(concurrent.futures.CancelledError):
        ar.result(timeout=10)
    with pytest.raises(concurrent.futures.CancelledError):
        ar.get(timeout=10)
    # The replies still came in: metadata is there, and the client is not left waiting.
    assert ar.ready() and ar.metadata["status"] == "ok"
    assert rc[0].apply_sync(lambda: 5) == 5


def test_metadata_of_errors_and_values(rc):
    ar = rc[0:2].apply_async(lambda: 1 / 0)
    with pytest.raises(testudo.CompositeError):
        ar.get(timeout=10)
    md = ar.metadata
    assert ar.metadata is md  # built once
    assert [m.status for m in md] == ["error", "error"]
    assert all(m.error.ename == "ZeroDivisionError" for m in md)
    assert ar.targets == [0, 1]
    assert [type(e).__name__ for e in ar.get(return_exceptions=True)] == ["RemoteError", "RemoteError"]
    ok = rc.load_balanced_view().apply_async(lambda: print("hi") or 7)
    assert ok.get(timeout=10) == 7
    assert ok.metadata.status == "ok" and ok.metadata.error is None and ok.stdout == "hi\n"
    assert ok.metadata.engine_id in rc.ids and ok.targets == [ok.metadata.engine_id]
    assert ok.wall_time >= 0 and ok.serial_time >= 0 and ok.elapsed >= 0


def test_zero_argument_calls_reuse_one_payload(rc):
    from testudo import _view

    def f():
        return 3

    f.__module__ = "__main__"  # cached like a function of the notebook
    first = _view._dumps_call(f, (), {})
    assert _view._dumps_call(f, (), {})[0] is first[0]
    assert rc[0].apply_sync(f) == 3
    f.__code__ = (lambda: 4).__code__  # a changed function is pickled again
    assert _view._dumps_call(f, (), {})[0] is not first[0]
    assert rc[0].apply_sync(f) == 4
    assert rc[0].apply_sync(f, *()) == 4


def test_async_map_result(rc):
    ar = rc[:].map_async(lambda x: x * 3, range(10))
    assert isinstance(ar, AsyncMapResult)
    assert list(ar) == [x * 3 for x in range(10)]
    assert len(ar) == 4
    assert ar.progress == 4
    assert repr(ar) == "<AsyncMapResult(<lambda>): finished>"


def test_progress_and_repr(rc):
    ar = rc[:].apply_async(sleep_then, 0.3, None)
    assert ar.progress == 0
    assert repr(ar) == "<AsyncResult(sleep_then): pending>"
    ar.get(timeout=10)
    assert ar.progress == 4
    assert repr(ar) == "<AsyncResult(sleep_then): finished>"


def test_get_return_exceptions(rc):
    ar = rc[:].map_async(lambda x: 1 / x, [1, 0, 2, 4])
    results = ar.get(timeout=10, return_exceptions=True)
    assert results[0] == 1.0 and results[2:] == [0.5, 0.25]
    assert isinstance(results[1], testudo.RemoteError)
    assert results[1].ename == "ZeroDivisionError"
    assert results[1].engine_info["engine_id"] == 1
