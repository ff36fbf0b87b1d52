"""%px, %%px, %autopx, %pxresult and %pxconfig through a real IPython InteractiveShell, on a
real, secure local cluster. The shape follows ipyparallel's test_magics.py; the tests are
our own."""

import re

import pytest
from IPython.testing.globalipapp import start_ipython

import testudo
from testudo import AsyncResult

EVERY = range(4)


@pytest.fixture(scope="module")
def ip():
    return start_ipython()


@pytest.fixture
def view(ip, rc):
    """Magics bound to rc[:] (blocking), as `rc.activate()` does in a notebook."""
    before = list(ip.input_transformers_post)
    v = rc.activate()
    yield v
    ip.input_transformers_post[:] = before  # a failed %autopx test must not leak
    rc[:].clear(block=True)


def stdout_lines(text, engines=EVERY):
    """What ipyparallel's %px prints for several engines: each one's header on its own line."""
    return "".join(f"[stdout:{i}] \n{text}\n" for i in engines)


def out_lines(text, engines=EVERY):
    """Execute results as ipyparallel shows them: Out[engine:execution count]."""
    return "".join(rf"Out\[{i}:\d+\]: {re.escape(text)}\n" for i in engines)


def test_activate_returns_blocking_view(view, rc):
    assert isinstance(view, testudo.DirectView)
    assert view.block is True
    assert view.targets == "all"


def test_px_line(ip, view, capsys):
    assert ip.run_line_magic("px", "a = 3") is None
    assert capsys.readouterr().out == ""
    assert view["a"] == [3, 3, 3, 3]
    ip.run_line_magic("px", "print(a * 2)")
    assert capsys.readouterr().out == stdout_lines("6")


def test_px_expression_shows_out(ip, view, capsys):
    ip.run_line_magic("px", "b = 40")
    ip.run_line_magic("px", "b + 2")
    assert re.fullmatch(out_lines("42"), capsys.readouterr().out)


def test_px_through_run_cell(ip, view, capsys):
    result = ip.run_cell("%px import os; print('pid', os.getpid() > 0)")
    assert result.success
    assert capsys.readouterr().out == stdout_lines("pid True")


def test_cell_px_targets(ip, view, capsys):
    ip.run_cell_magic("px", "--targets ::2", "c = 'even'\nprint(c)")
    assert capsys.readouterr().out == stdout_lines("even", [0, 2])
    assert view.targets == "all"  # --targets does not change the default
    ip.run_cell_magic("px", "--targets [1,3]", "print('odd')")
    assert capsys.readouterr().out == stdout_lines("odd", [1, 3])
    ip.run_cell_magic("px", "--targets 2", "print('two')")
    assert capsys.readouterr().out == "two\n"  # one engine: no header, as ipyparallel
    assert view.pull("c", targets=[0, 2]) == ["even", "even"]


def test_cell_px_noblock_and_pxresult(ip, view, capsys):
    ar = ip.run_cell_magic("px", "--noblock", "import time; time.sleep(0.2)\nprint('later')\n5")
    assert isinstance(ar, AsyncResult)
    assert not ar.ready()
    assert capsys.readouterr().out == ""
    assert view.block is True  # --noblock does not change the default
    ip.run_line_magic("pxresult", "")
    assert ar.ready()
    assert re.fullmatch(re.escape(stdout_lines("later")) + out_lines("5"), capsys.readouterr().out)


def test_cell_px_block_on_nonblocking_view(ip, view, capsys):
    view.block = False
    ar = ip.run_line_magic("px", "print('async')")
    assert isinstance(ar, AsyncResult)
    ar.get(timeout=10)
    assert capsys.readouterr().out == ""
    assert ip.run_cell_magic("px", "--block", "print('sync')") is None
    assert capsys.readouterr().out == stdout_lines("sync")
    assert view.block is False


def test_px_remote_error_raises(ip, view, capsys):
    with pytest.raises(testudo.CompositeError) as info:
        ip.run_line_magic("px", "print('before'); 1/0")
    assert [e[0] for e in info.value.elist] == ["ZeroDivisionError"] * 4
    assert capsys.readouterr().out == stdout_lines("before")  # outputs so far, then the error


def test_px_remote_error_in_a_cell(ip, view, capsys):
    result = ip.run_cell("%%px --targets 1\nx = 1\nraise RuntimeError('boom on the engine')")
    assert not result.success
    err = result.error_in_exec
    assert type(err) is testudo.RemoteError  # one engine: not a CompositeError
    assert (err.ename, err.engine_info["engine_id"]) == ("RuntimeError", 1)
    out = capsys.readouterr().out
    assert "raise RuntimeError('boom on the engine')" in out  # the remote traceback, not ours
    assert "RuntimeError: boom on the engine" in out


def test_autopx(ip, view, capsys):
    assert "z" not in ip.user_ns
    ip.run_cell("%autopx")
    assert capsys.readouterr().out == "%autopx enabled\n"
    result = ip.run_cell("z = 11\nprint('auto', z)")
    assert result.success
    assert capsys.readouterr().out == stdout_lines("auto 11")
    assert "z" not in ip.user_ns  # ran on the engines, not here
    ip.run_cell("%autopx")
    assert capsys.readouterr().out == "%autopx disabled\n"
    assert view["z"] == [11] * 4
    ip.run_cell("local_only = 1")
    assert ip.user_ns.pop("local_only") == 1
    with pytest.raises(testudo.CompositeError):
        view["local_only"]


def test_autopx_remote_error_keeps_going(ip, view, capsys):
    ip.run_cell("%autopx")
    result = ip.run_cell("1/0")
    assert isinstance(result.error_in_exec, testudo.CompositeError)
    assert ip.run_cell("print('still on engines')").success
    ip.run_cell("%autopx")
    out = capsys.readouterr().out
    assert "[0:execute]" in out and "ZeroDivisionError" in out
    assert stdout_lines("still on engines") in out
    assert out.endswith("%autopx disabled\n")


def test_pxconfig(ip, view, capsys):
    ip.run_line_magic("pxconfig", "--targets [0,1] --noblock")
    assert view.targets == [0, 1] and view.block is False
    ar = ip.run_line_magic("px", "print('configured')")
    assert isinstance(ar, AsyncResult)
    assert ar.targets == [0, 1]
    ar.get(timeout=10)
    ip.run_line_magic("pxconfig", "--block")
    ip.run_line_magic("px", "print('blocking again')")
    assert capsys.readouterr().out == stdout_lines("blocking again", [0, 1])


def test_pxresult_before_any_px(ip, rc):
    rc.activate(suffix="_fresh")
    with pytest.raises(testudo.error.TestudoError, match="no %px result yet"):
        ip.run_line_magic("pxresult_fresh", "")


def test_unknown_option(ip, view):
    with pytest.raises(testudo.error.TestudoError, match="unknown %px option --bogus"):
        ip.run_cell_magic("px", "--bogus", "x = 1")


def test_activate_with_suffix(ip, view, rc, capsys):
    odd = rc.activate(targets=[1, 3], suffix="odd")
    assert odd.targets == [1, 3]
    ip.run_line_magic("pxodd", "print('odd engines')")
    assert capsys.readouterr().out == stdout_lines("odd engines", [1, 3])
    ip.run_line_magic("px", "print('all engines')")  # the unsuffixed magics still target all
    assert capsys.readouterr().out == stdout_lines("all engines")


def test_activate_with_a_negative_index_targets_the_last_engine(ip, view, rc, capsys):
    last = rc.activate(-1, suffix="last")  # as ipyparallel: counts from the end of rc.ids
    assert last.targets == 3 and last.block is True
    ip.run_line_magic("pxlast", "print('last one')")
    assert capsys.readouterr().out.count("last one") == 1
    ip.run_line_magic("pxlast", "marker = 'here'")
    assert rc[-1]["marker"] == "here"
    rc[:].execute("found = 'marker' in globals()", block=True)
    assert rc[:]["found"] == [False, False, False, True]


# ----- ipyparallel's %px flags: --verbose, --group-outputs, --stream, --out, --progress-after,
# ----- --local; %pxconfig -t N, --verbose, --stream

def magics_of(ip):
    return ip.magics_manager.registry["ParallelMagics"]  # the latest activate()'s


def test_verbose(ip, view, capsys):
    ip.run_cell_magic("px", "", "x = 1")
    assert capsys.readouterr().out == ""
    ip.run_line_magic("pxconfig", "--verbose")
    ip.run_cell_magic("px", "", "x = 1")
    assert capsys.readouterr().out == "Parallel execution on engine(s): all\n"
    ip.run_cell_magic("px", "--noblock", "x = 1").get(timeout=10)
    assert capsys.readouterr().out == "Async parallel execution on engine(s): all\n"
    ip.run_cell_magic("px", "--targets [1,3]", "print('v')")
    assert capsys.readouterr().out == "Parallel execution on engine(s): [1, 3]\n" + stdout_lines("v", [1, 3])
    ip.run_line_magic("pxconfig", "--no-verbose")
    ip.run_cell_magic("px", "", "x = 1")
    ip.run_cell_magic("px", "--verbose", "x = 1")  # for this cell only
    assert capsys.readouterr().out == "Parallel execution on engine(s): all\n"


GENERATE = "print('p')\n40 + 2"


def test_group_outputs(ip, view, capsys):
    ip.run_cell_magic("px", "--targets [0,1] --group-outputs=engine", GENERATE)
    by_engine = capsys.readouterr().out
    assert re.fullmatch(r"\[stdout:0\] \np\n\[output:0\]\nOut\[0:\d+\]: 42\n"
                        r"\[stdout:1\] \np\n\[output:1\]\nOut\[1:\d+\]: 42\n", by_engine), by_engine
    ip.run_cell_magic("px", "--targets [0,1] -e", GENERATE)
    assert re.sub(r":\d+\]: ", "", capsys.readouterr().out) == re.sub(r":\d+\]: ", "", by_engine)
    for flags in ("--group-outputs type", "--group-outputs=order", "-r", ""):
        ip.run_cell_magic("px", f"--targets [0,1] {flags}", GENERATE)
        out = capsys.readouterr().out
        assert re.fullmatch(r"\[stdout:0\] \np\n\[stdout:1\] \np\n" + out_lines("42", [0, 1]), out), (flags, out)
    with pytest.raises(testudo.error.TestudoError, match="--group-outputs takes one of type, engine, order"):
        ip.run_cell_magic("px", "--group-outputs=bogus", "x = 1")


STREAMED = ("import sys, time\nprint('first'); sys.stdout.flush()\ntime.sleep(0.8)\n"
            "print('second'); print('err', file=sys.stderr)")


def test_stream(ip, view, capsys):
    ip.run_cell_magic("px", "--targets [0,1] --stream", STREAMED)
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    # Each engine's first line came as it was written, before any engine's second, under a
    # header whenever the engine changes (as ipyparallel's).
    text = [t for t in lines if not t.startswith("[stdout:")]
    assert text == ["first", "first", "second", "second"], lines
    assert lines[0] in ("[stdout:0] ", "[stdout:1] ") and {"[stdout:0] ", "[stdout:1] "} <= set(lines)
    assert captured.err.splitlines().count("err") == 2
    # Not streamed: each engine's whole output together.
    ip.run_cell_magic("px", "--targets [0,1] --no-stream", STREAMED)
    assert capsys.readouterr().out == "".join(f"[stdout:{i}] \nfirst\nsecond\n" for i in (0, 1))
    ip.run_line_magic("pxconfig", "--stream")
    assert magics_of(ip).stream_output is True
    ip.run_cell_magic("px", "--targets 2", STREAMED)
    assert capsys.readouterr().out == "[stdout:2] \nfirst\nsecond\n"  # a header when it changes


def test_out_stores_the_result(ip, view, capsys):
    assert ip.run_cell_magic("px", "--out kept", "6 * 7") is None
    kept = ip.user_ns.pop("kept")
    assert isinstance(kept, AsyncResult) and kept.ready()
    assert [r.execute_result["data"]["text/plain"] for r in kept.get()] == ["42"] * 4
    ar = ip.run_cell_magic("px", "-o later --noblock", "'later'")
    assert ip.user_ns.pop("later") is ar
    capsys.readouterr()
    ip.run_line_magic("pxresult", "--out again -e")
    assert ip.user_ns.pop("again") is ar
    assert re.fullmatch("".join(rf"\[output:{i}\]\nOut\[{i}:\d+\]: 'later'\n" for i in EVERY), capsys.readouterr().out)


def test_progress_after(ip, view, capsys):
    ip.run_cell_magic("px", "--progress-after 0", "import time; time.sleep(0.3)")
    err = capsys.readouterr().err
    assert "%px: |" in err and "4/4 tasks finished" in err and err.endswith("done\n")
    ip.run_cell_magic("px", "--progress-after=-1", "import time; time.sleep(0.3)")
    ip.run_cell_magic("px", "", "import time; time.sleep(0.3)")  # the default: after 2 s
    assert capsys.readouterr().err == ""
    ip.run_line_magic("pxconfig", "--progress-after 0")
    ip.run_line_magic("px", "import time; time.sleep(0.2)")
    assert "%px: |" in capsys.readouterr().err


def test_local_runs_here_too(ip, view, capsys):
    ip.run_cell_magic("px", "--local", "both = 40 + 2\nprint('ran', both)")
    assert ip.user_ns.pop("both") == 42
    assert view["both"] == [42] * 4
    out = capsys.readouterr().out
    assert out == "ran 42\n" + stdout_lines("ran 42")  # the local run first, as ipyparallel
    ar = ip.run_cell_magic("px", "--local --noblock", "here = 1")
    assert isinstance(ar, AsyncResult) and ip.user_ns.pop("here") == 1
    ar.get(timeout=10)


def test_pxconfig_int_and_slice_targets(ip, view, rc):
    ip.run_line_magic("pxconfig", "-t 1")
    assert view.targets == 1
    ip.run_line_magic("px", "on_one = True")
    rc[:].execute("found = 'on_one' in globals()", block=True)
    assert rc[:]["found"] == [False, True, False, False]
    ip.run_line_magic("pxconfig", "-t ::2")
    assert view.targets == [0, 2]
    ip.run_line_magic("pxconfig", "--targets :")
    assert view.targets == rc.ids
    ip.run_line_magic("pxconfig", "-t all -a")
    assert view.targets == "all" and view.block is False
    with pytest.raises(testudo.error.TestudoError, match="unknown %px option --out"):
        ip.run_line_magic("pxconfig", "--out x")
    with pytest.raises(testudo.error.TestudoError, match="unknown %px option -t"):
        ip.run_line_magic("pxresult", "-t 1")


def test_px_line_code_starting_with_a_minus(ip, view, capsys):
    ip.run_line_magic("px", "-1")
    assert re.fullmatch(out_lines("-1"), capsys.readouterr().out)
