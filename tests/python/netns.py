"""Test hosts on this machine: network namespaces with veth links and a real sshd each, and a
TCP proxy that delays every byte, for tests/python/test_ssh_launcher.py and bench/ssh_launch.py.
Needs root, ip, ssh-keygen and sshd. Everything made here is removed by close()."""

import asyncio
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading

from conftest import wait_until

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def sh(*argv, check=True):
    return subprocess.run(argv, check=check, capture_output=True, text=True)


class Hosts:
    """Namespaces (B and C by default), each an sshd at 10.<net>.0.<i+1>, all on one bridge of
    this host, which is 10.<net>.0.1 there: every namespace reaches this host and every other
    namespace directly (one L2 segment, no forwarding). bench/ssh_launch.py uses it too."""

    def __init__(self, names=("b", "c")):
        self.dir = tempfile.mkdtemp(prefix="testudo-ssh-")
        self.tag = f"tdo{os.getpid() % 100000}"
        self.net = 200 + os.getpid() % 50
        self.sshd = []
        self.namespaces = []
        self.address = {}
        self.link = {}  # name -> its end of the veth pair (inside the namespace)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{self.dir}/host_key")
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{self.dir}/user_key")
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{self.dir}/stranger_key")
        shutil.copy(f"{self.dir}/user_key.pub", f"{self.dir}/authorized_keys")
        host_key = pathlib.Path(f"{self.dir}/host_key.pub").read_text().split()[:2]
        self.bridge = f"{self.tag}-br"
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"10.{self.net}.0.1/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        # The connection files name this host's address on the bridge.
        self.controller_address = f"10.{self.net}.0.1"
        known = []
        for i, name in enumerate(names, start=2):
            ns = f"{self.tag}-{name}"
            outside, inside = f"{ns}-h", f"{ns}-n"
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            sh("ip", "link", "set", inside, "netns", ns)
            sh("ip", "link", "set", outside, "master", self.bridge)
            sh("ip", "link", "set", outside, "up")
            address = f"10.{self.net}.0.{i}"
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{address}/24", "dev", inside)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", inside, "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            self.address[name] = address
            self.link[name] = inside
            config = f"{self.dir}/sshd_{name}"
            pathlib.Path(config).write_text(
                f"ListenAddress {address}\nHostKey {self.dir}/host_key\nAuthorizedKeysFile {self.dir}/authorized_keys\n"
                "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPidFile none\n")
            self.sshd.append(subprocess.Popen(["ip", "netns", "exec", ns, SSHD, "-D", "-e", "-f", config],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            known.append(f"{address} {' '.join(host_key)}")
        pathlib.Path(f"{self.dir}/known_hosts").write_text("\n".join(known) + "\n")
        self.ssh_config = self.write_ssh_config("ssh_config", "user_key")
        for name in names:
            assert wait_until(lambda n=name: self.ssh(n, "true").returncode == 0, 10), f"sshd in {name} not up"

    def namespace(self, name):
        return f"{self.tag}-{name}"

    def run_in(self, name, *argv, check=True):
        """argv run inside namespace `name`."""
        return sh("ip", "netns", "exec", self.namespace(name), *argv, check=check)

    def write_ssh_config(self, name, key):
        path = f"{self.dir}/{name}"
        pathlib.Path(path).write_text(
            f"Host *\n  IdentityFile {self.dir}/{key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {self.dir}/known_hosts\n"
            "  StrictHostKeyChecking yes\n  BatchMode yes\n  User root\n  ConnectTimeout 3\n")
        return path

    def ssh(self, name, command):
        return subprocess.run(["ssh", "-F", self.ssh_config, self.address[name], command], capture_output=True,
                              text=True, timeout=20)

    def close(self):
        for p in self.sshd:
            p.kill()
            p.wait()
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)  # takes its end of the veth pair, and so the pair
        sh("ip", "link", "del", self.bridge, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


class ShapedLink:
    """One namespace joined to this host by a veth pair whose both directions are shaped by
    `tc tbf` to `rate` (e.g. "100mbit"): this host is 10.<net>.0.1, the namespace 10.<net>.0.2.
    This kernel has no netem; tbf shapes rate only. close() removes it all."""

    def __init__(self, rate):
        self.tag = f"tds{os.getpid() % 100000}"
        self.net = 150 + os.getpid() % 50
        self.namespace = f"{self.tag}-ns"
        outside, inside = f"{self.tag}-h", f"{self.tag}-n"
        self.host_address, self.address = f"10.{self.net}.0.1", f"10.{self.net}.0.2"
        sh("ip", "netns", "add", self.namespace)
        try:
            sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            sh("ip", "link", "set", inside, "netns", self.namespace)
            sh("ip", "addr", "add", f"{self.host_address}/24", "dev", outside)
            sh("ip", "link", "set", outside, "up")
            self.run_in("ip", "addr", "add", f"{self.address}/24", "dev", inside)
            self.run_in("ip", "link", "set", inside, "up")
            self.run_in("ip", "link", "set", "lo", "up")
            # burst must hold the largest (GSO) packet a veth hands over, 64 KiB.
            tbf = ("root", "tbf", "rate", rate, "burst", "256kb", "latency", "100ms")
            sh("tc", "qdisc", "add", "dev", outside, *tbf)
            self.run_in("tc", "qdisc", "add", "dev", inside, *tbf)
        except BaseException:
            self.close()
            raise

    def run_in(self, *argv, check=True):
        return sh("ip", "netns", "exec", self.namespace, *argv, check=check)

    def close(self):
        sh("ip", "netns", "del", self.namespace, check=False)  # takes the veth pair with it


def netns_of(pid):
    return sh("ip", "netns", "identify", str(pid)).stdout.strip()


class DelayProxy:
    """listen_host:port -> target_host:port, each chunk held `delay` seconds per direction."""

    def __init__(self, listen_host, target_host, port, delay):
        self.listen_host, self.target_host, self.port, self.delay = listen_host, target_host, port, delay
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait()

    def _run(self, ready):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._serve, self.listen_host, self.port))
        ready.set()
        self.loop.run_forever()

    async def _pipe(self, reader, writer):
        queue = asyncio.Queue()

        async def deliver():
            while True:
                due, data = await queue.get()
                if data is None:
                    break
                await asyncio.sleep(max(0.0, due - self.loop.time()))
                writer.write(data)
                await writer.drain()
            writer.close()

        sender = asyncio.ensure_future(deliver())
        try:
            while data := await reader.read(1 << 16):
                queue.put_nowait((self.loop.time() + self.delay, data))
        finally:
            queue.put_nowait((0, None))
            await sender

    async def _serve(self, reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)

    def close(self):
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
