"""A notebook that uses testudo the ipyparallel way (%load_ext testudo, %px, %%px --targets,
%%px --stream, a progress bar, become_dask()), executed by `jupyter nbconvert --execute` in a real python3 kernel against a real, secure
local cluster."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (Debian: python3-nbformat)")

KERNEL = "testudo-python3"
PYTHON = "/usr/bin/python3"


def _jupyter_env(tmp_path, cluster):
    """An environment with a private Jupyter setup whose only extra kernel runs /usr/bin/python3."""
    data = tmp_path / "jupyter-data"
    kernel_dir = data / "kernels" / KERNEL
    kernel_dir.mkdir(parents=True)
    (kernel_dir / "kernel.json").write_text(json.dumps({
        "argv": [PYTHON, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (testudo tests)",
        "language": "python",
    }))
    package_dir = str(pathlib.Path(sys.modules["testudo"].__file__).resolve().parents[1])
    env = dict(os.environ)
    env.update({
        "JUPYTER_PATH": str(data),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "TESTUDO_HOME": cluster.home,
        "TESTUDO_PROFILE": cluster.profile,  # what Client() and %load_ext testudo connect to
        "PYTHONPATH": os.pathsep.join(p for p in [package_dir, env.get("PYTHONPATH", "")] if p),
    })
    return env


def _check_tools(env):
    if shutil.which("jupyter-nbconvert") is None:
        pytest.skip("`jupyter nbconvert` is not installed (Debian: jupyter-nbconvert)")
    probe = subprocess.run(
        [PYTHON, "-c", "import ipykernel; from jupyter_client.kernelspec import KernelSpecManager; "
                       f"print(KernelSpecManager().get_kernel_spec({KERNEL!r}).argv[0])"],
        env=env, capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"the python3 kernel is unavailable (Debian: python3-ipykernel): {probe.stderr.strip()[-300:]}")
    assert probe.stdout.strip() == PYTHON  # the kernel nbconvert will start runs /usr/bin/python3


def _stdout_of(cell):
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def test_notebook_with_px_magics(cluster, rc, tmp_path):
    env = _jupyter_env(tmp_path, cluster)
    _check_tools(env)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3 (testudo tests)", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell("%load_ext testudo"),  # %px and friends, on $TESTUDO_PROFILE's cluster
        nbformat.v4.new_code_cell(
            "import sys, testudo\n"
            "print('kernel', sys.executable)\n"
            "rc = testudo.Client()\n"
            "rc.wait_for_engines(4, timeout=30)\n"
            "print('engines', rc.ids)"),
        nbformat.v4.new_code_cell("%px print('engine says', 6 * 7)"),
        nbformat.v4.new_code_cell("%%px --targets ::2\nnote = 'even'\nprint('even engine', note)"),
        nbformat.v4.new_code_cell("%px 6 * 7"),
        nbformat.v4.new_code_cell("print(rc[:].pull('note', targets=[0, 2], block=True))"),
        # Output shown while the cell runs, as ipyparallel's %%px --stream.
        nbformat.v4.new_code_cell("%%px --stream --targets 0\nimport time\nprint('first')\ntime.sleep(0.3)\n"
                                  "print('second')"),
        # A progress bar: in a kernel, an ipywidgets bar.
        nbformat.v4.new_code_cell("import time\nar = rc[:].apply_async(time.sleep, 0.3)\nar.wait_interactive()\n"
                                  "print('done', ar.ready(), len(ar))"),
        # The engines as a dask cluster, and a computation on it.
        nbformat.v4.new_code_cell("dc = rc.become_dask()\nprint('dask', dc.submit(lambda x: x + 1, 41).result())\n"
                                  "rc.stop_dask()\nrc.close()"),
    ]
    path = tmp_path / "px.ipynb"
    nbformat.write(nb, str(path))
    run = subprocess.run(
        ["jupyter-nbconvert", "--to", "notebook", "--execute", f"--ExecutePreprocessor.kernel_name={KERNEL}",
         "--ExecutePreprocessor.timeout=60", "--output", "px-executed.ipynb", str(path)],
        env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    executed = nbformat.read(str(tmp_path / "px-executed.ipynb"), as_version=4)
    cells = executed.cells
    assert executed.metadata.kernelspec.name == KERNEL
    assert not [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert cells[0].outputs == []
    assert _stdout_of(cells[1]) == f"kernel {PYTHON}\nengines [0, 1, 2, 3]\n"
    assert _stdout_of(cells[2]) == "".join(f"[stdout:{i}] \nengine says 42\n" for i in range(4))
    assert _stdout_of(cells[3]) == "[stdout:0] \neven engine even\n[stdout:2] \neven engine even\n"
    # Execute results as ipyparallel shows them in a notebook: one display per engine, its text
    # Out[engine:execution count], its prompt in red as IPython colours it.
    shown = [o.data["text/plain"] for o in cells[4].outputs if o.output_type == "display_data"]
    plain = [re.sub(r":\d+\]", ":N]", re.sub(r"\x1b\[[0-9;]*m", "", t)) for t in shown]
    assert plain == [f"Out[{i}:N]: 42" for i in range(4)], cells[4].outputs
    # (a slow %px under load also shows its progress line on stderr: a stream, no metadata)
    assert all(o.metadata == {} for o in cells[4].outputs if o.output_type == "display_data")
    assert _stdout_of(cells[5]) == "['even', 'even']\n"
    streamed = _stdout_of(cells[6])
    assert "first" in streamed and "second" in streamed and streamed.index("first") < streamed.index("second")
    assert "[stdout:0]" in streamed
    # Debian 12's ipywidgets (6.0) speaks a protocol nbclient no longer does: the bar is text on
    # stderr then (with ipywidgets 7+ it is a widget).
    import ipywidgets
    if int(ipywidgets.__version__.split(".")[0]) >= 7:
        assert [o for o in cells[7].outputs if o.output_type == "display_data"
                and "application/vnd.jupyter.widget-view+json" in o.data], cells[7].outputs
    else:
        bar = "".join(o.get("text", "") for o in cells[7].outputs if o.output_type == "stream" and o.name == "stderr")
        assert "4/4 tasks finished" in bar, cells[7].outputs
    assert _stdout_of(cells[7]).endswith("done True 4\n")
    assert _stdout_of(cells[8]) == "dask 42\n"
    # The engines really ran it: the variable is there on the even engines only.
    assert rc[::2].pull("note", block=True) == ["even", "even"]
    with pytest.raises(Exception) as info:
        rc[1].pull("note", block=True)
    assert info.value.ename == "NameError"
    rc[:].clear(block=True)
