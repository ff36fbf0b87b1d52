"""An SSH port forward to the controller, for Client(sshserver=...): the real OpenSSH client
(`ssh -N -L`), so the user's keys, agent, config and known hosts apply and testudo holds no
SSH code. The tunnel adds reachability only: the controller is still pinned by the connection
file's fingerprint and the capability proven end to end through it."""

import os
import shutil
import socket
import subprocess
import time
import weakref


def _free_local_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SshTunnel:
    """127.0.0.1:<local_port> -> (through `server`) remote_host:remote_port, until close()."""

    def __init__(self, server, remote_host, remote_port, *, key=None, ssh_args=(), timeout=10.0):
        ssh = shutil.which("ssh")
        if ssh is None:
            raise FileNotFoundError("sshserver= needs the OpenSSH client `ssh` on PATH (Debian: openssh-client)")
        host, _, port = server.rpartition(":") if server.count(":") == 1 else (server, "", "")
        host = host or server
        self.local_port = _free_local_port()
        argv = [ssh, "-N", "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
                "-L", f"127.0.0.1:{self.local_port}:{remote_host}:{remote_port}", *ssh_args]
        if key:
            argv += ["-i", os.path.expanduser(key), "-o", "IdentitiesOnly=yes"]
        if port:
            argv += ["-p", port]
        argv += ["--", host]
        self.server = server
        self._process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, start_new_session=True)
        # A client dropped without close(), or the interpreter exiting, still ends the tunnel.
        self._finalizer = weakref.finalize(self, SshTunnel._stop, self._process)
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                lines = [line for line in self._process.stderr.read().decode(errors="replace").splitlines()
                         if line.strip()]
                raise ConnectionError(f"SSH tunnel through {server} failed: "
                                      f"{lines[-1] if lines else f'ssh exit status {self._process.returncode}'}")
            try:
                with socket.create_connection(("127.0.0.1", self.local_port), timeout=0.2):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise TimeoutError(f"SSH tunnel through {server} not up within {timeout} seconds")
            time.sleep(0.02)

    @property
    def pid(self):
        return self._process.pid

    def close(self):
        self._finalizer()

    @staticmethod
    def _stop(process):
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stderr:
            process.stderr.close()
