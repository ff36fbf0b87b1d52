"""rc.become_dask() / rc.stop_dask(): the engines as the workers of a dask.distributed cluster
(ipyparallel's Client.become_dask).

ipyparallel runs the dask Scheduler in its controller; testudo's controller runs no Python, so
the Scheduler runs in this client's process, on a thread of its own, and lives until stop_dask
or the client closes. Each engine runs a Worker on a thread of its own. Every dask connection
is TLS with keys made for this cluster alone (distributed.Security.temporary()), sent to the
engines over testudo's channel: dask's plain TCP would let anyone who reaches the port run code
on the engines.
"""

import asyncio
import threading

_START_TIMEOUT = 60.0


class _Loop:
    """An asyncio loop on a daemon thread (the dask Scheduler's, in the client)."""

    def __init__(self, name):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coroutine, timeout=_START_TIMEOUT):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class DaskScheduler:
    """The dask Scheduler of one client's become_dask."""

    def __init__(self, scheduler_args):
        from distributed import Scheduler, Security
        self.security = Security.temporary()
        args = dict(scheduler_args)
        # Loopback unless asked otherwise (engines on other hosts need host= or ip=).
        if "ip" in args:
            args.setdefault("host", args.pop("ip"))
        args.setdefault("host", "127.0.0.1")
        args.setdefault("port", 0)
        args.setdefault("protocol", "tls")
        args.setdefault("dashboard_address", None)
        self._loop = _Loop("testudo-dask-scheduler")

        async def start():
            return await Scheduler(security=self.security, **args)
        try:
            self.scheduler = self._loop.call(start())
        except BaseException:
            self._loop.stop()
            raise
        self.address = self.scheduler.address

    def close(self):
        try:
            self._loop.call(self.scheduler.close(), timeout=30)
        finally:
            self._loop.stop()


def become_worker(address, security, nanny=False, **worker_args):
    """Runs on an engine: a dask Worker (or Nanny) on a thread of its own, connected to
    `address`; `dask_worker` in the engine's namespace. Nothing if one runs already."""
    import asyncio
    import concurrent.futures
    import sys
    import threading
    engine = sys.modules["_testudo_engine"]
    if getattr(engine, "_testudo_dask", None) is not None:
        return None
    from distributed import Nanny, Worker
    loop = asyncio.new_event_loop()
    started = concurrent.futures.Future()

    def run():
        asyncio.set_event_loop(loop)

        async def start():
            cls = Nanny if nanny else Worker
            return await cls(address, security=security, **worker_args)
        try:
            started.set_result(loop.run_until_complete(start()))
        except BaseException as exc:
            started.set_exception(exc)
            return
        loop.run_forever()

    thread = threading.Thread(target=run, name="testudo-dask-worker", daemon=True)
    thread.start()
    worker = started.result(60)
    engine._testudo_dask = (worker, loop, thread)
    engine._ns["dask_worker"] = engine._ns["distributed_worker"] = worker
    return worker.address


def stop_worker():
    """Runs on an engine: stops the Worker become_worker started, if any."""
    import asyncio
    import sys
    engine = sys.modules["_testudo_engine"]
    running = getattr(engine, "_testudo_dask", None)
    if running is None:
        return None
    worker, loop, thread = running
    engine._testudo_dask = None
    for name in ("dask_worker", "distributed_worker"):
        if engine._ns.get(name) is worker:
            del engine._ns[name]
    try:
        asyncio.run_coroutine_threadsafe(worker.close(), loop).result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    return worker.address


def become_dask(client, targets="all", port=0, nanny=False, scheduler_args=None, **worker_args):
    """See Client.become_dask."""
    import distributed
    if client._dask is None:
        args = dict(scheduler_args or {})
        if port:
            args.setdefault("port", port)
        client._dask = DaskScheduler(args)
    dask = client._dask
    if "ncores" in worker_args:  # ipyparallel's name, from older distributed
        worker_args.setdefault("nthreads", worker_args.pop("ncores"))
    worker_args.setdefault("nthreads", 1)  # one engine, one thread: as ipyparallel sets it
    view = client.direct_view(targets)
    view.apply_sync(become_worker, dask.address, dask.security, nanny=nanny, **worker_args)
    return distributed.Client(dask.address, security=dask.security)


def stop_dask(client, targets="all"):
    """See Client.stop_dask."""
    client.direct_view(targets).apply_sync(stop_worker)
    if client._dask is not None:
        dask, client._dask = client._dask, None
        dask.close()
