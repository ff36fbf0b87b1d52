"""Where the controller listens and which address its connection files name (issue 12's first
step): a controller on every interface writes an address others can dial, never "0.0.0.0",
and --location / --port are what the files say. Real clusters, real connections."""

import json
import pathlib
import socket

from conftest import Cluster


def _connection(cluster, role="client"):
    return json.loads(pathlib.Path(cluster.path("security", f"controller-{role}.json")).read_text())


def _answers(cluster):
    with cluster.client() as rc:
        rc.wait_for_engines(cluster.n, timeout=30)
        return rc[:].apply_sync(lambda: 6 * 7)


def test_every_interface_writes_this_hosts_name():
    c = Cluster(1, profile="everywhere", extra=("--ip", "0.0.0.0"))
    try:
        for role in ("client", "engine"):
            assert _connection(c, role)["host"] == socket.gethostname()
        # The engine dialled that name too: the cluster works through it.
        assert _answers(c) == [42]
        assert c.run("cluster", "stop").returncode == 0
    finally:
        c.stop()


def test_location_and_port_are_what_the_files_say():
    with socket.socket() as s:  # a port free right now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # "*" is ipyparallel's spelling of "every interface".
    c = Cluster(1, profile="located", extra=("--ip", "*", "--location", "127.0.0.1", "--port", str(port)))
    try:
        info = _connection(c)
        assert (info["host"], info["port"]) == ("127.0.0.1", port)
        assert _answers(c) == [42]
    finally:
        c.stop()
