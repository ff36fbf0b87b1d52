"""testudo.Client: a connection to a controller, with ipyparallel's Client API."""

import atexit
import concurrent.futures
import json
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterable

from . import _testudo, error
from ._asyncresult import AsyncResult, _seconds
from ._clientargs import check_ipyparallel_arguments, login_arguments
from ._history import History
from ._storedresults import StoredResults
from ._tunnel import SshTunnel
from ._view import DirectView

_live_clients = weakref.WeakSet()


@atexit.register
def _close_all():
    # Join network threads before the interpreter goes away.
    for client in list(_live_clients):
        client.close()


def _once_per_result(question):
    """`question(ar)`, asked once per distinct result and remembered for this pass."""
    answers = {}

    def ask(ar):
        key = id(ar)
        if key not in answers:
            answers[key] = question(ar)
        return answers[key]
    return ask


class Client(StoredResults):
    """Connect to a testudo controller.

        rc = testudo.Client()                 # $TESTUDO_PROFILE's (else 'default''s) connection file
        rc = testudo.Client(profile='demo')
        rc = testudo.Client('/path/to/controller-client.json')

    The connection is TLS 1.3, the controller is pinned by the fingerprint in the file, and
    the client capability is proven without being sent. Raises PermissionError (refused,
    or an unsafe file mode), FileNotFoundError (no connection file: is a cluster running?),
    TimeoutError or ConnectionError.

    Your identity is the key in ``identity_dir`` (default ``$TESTUDO_HOME/identity``), made on
    first use; the controller must trust it (``testudo keys``). An encrypted key's passphrase
    comes from ``key_passphrase_from``: ``'prompt'``, ``'file:PATH'``, ``'env:NAME'`` or
    ``'command:CMD'`` (default: ``$TESTUDO_KEY_PASSPHRASE_FROM``, else the terminal), or a
    callable returning it.

    Or log in instead of using a key (docs/security.md, "Logins"), as the controller allows:
    ``username='alice', password=str|callable`` (SCRAM-SHA-256-PLUS; no password: asked on the
    terminal), ``token_provider=str|callable|obj-with-token()`` or ``token_from='file:PATH'|
    'env:NAME'|'command:CMD'`` (a JSON Web Token, asked for again when it expires), or
    ``kerberos=True`` (the credential cache of ``kinit``; ``service_principal=`` overrides the
    controller's). Every login is bound to this TLS session.

    Through an SSH gateway, as ipyparallel: ``Client(sshserver='user@gateway[:port]',
    sshkey='~/.ssh/id_ed25519')`` forwards a local port to the controller's address (as the
    connection file gives it, seen from the gateway) with the OpenSSH client; ``ssh_args``
    adds ssh options (e.g. ``['-F', 'config']``). The pin and the capability proof still run end
    to end through the tunnel, which closes with the client. A connection file with an ``ssh``
    field (``cluster start --ssh-server GATEWAY``) tunnels through that gateway by default when
    the controller is on another host; ``sshserver=''`` dials directly.

    End-to-end sealing is on by default: every request is sealed for the engines that run it
    and only their sealed replies are accepted; the controller relays them but can neither read
    nor alter them (docs/security.md, "End-to-end sealing"); a reply it altered, swapped or
    forged raises ``SealBroken``. Engines are checked against ``engine_keys`` (key
    fingerprints) or ``engine_cafile``, by default the cluster's shared engine certificate
    (beside the connection file), which the engines of ``testudo cluster start`` present.
    ``e2e=None`` (the default) seals whenever this client can, judged from what it holds
    itself: your key (a login cannot seal) and a root for engine keys; ``rc.e2e`` says whether
    it does and ``rc.e2e_off_because`` why not. ``e2e=True`` fails rather than run unsealed;
    ``e2e=False`` turns sealing off. Load-balanced requests go only to engines this client
    could pair with; stored results open in any process of your identity that seals. A sealed
    request whose body is at least ``bulk_from_bytes`` (1 MiB) per engine sends that body on a
    data connection the controller splices to the engine without reading it (the bulk path;
    ``0``: never).
    """

    def __new__(cls, *args, **kwargs):
        # Its own __new__, as ipyparallel's Client has (traitlets): mock.patch.object(Client,
        # '__new__', ...) then restores it cleanly; without one, CPython leaves a class whose
        # instances can no longer be made with arguments.
        return super().__new__(cls)

    # Engine ids used by views targeting 'all' are refreshed at most this often; rc.ids is
    # always fresh.
    ids_max_age = 1.0

    # The default of `block` for views made from this client afterwards (each view copies it
    # when made, as ipyparallel's do) and for the client's own get_result and shutdown.
    block = False

    _dask = None  # the dask Scheduler of become_dask, until stop_dask

    def __init__(self, url_file=None, profile=None, timeout=10, *, connection_file=None, identity_dir=None,
                 key_passphrase_from=None, sshserver=None, sshkey=None, ssh_args=(), username=None, password=None,
                 token_provider=None, token_from=None, kerberos=False, service_principal=None, e2e=None,
                 engine_keys=(), engine_cafile=None, bulk_from_bytes=1 << 20, **kwargs):
        check_ipyparallel_arguments(kwargs)
        if isinstance(engine_keys, str):
            engine_keys = (engine_keys,)
        if e2e is False and (engine_keys or engine_cafile):
            raise ValueError("Client(engine_keys=..., engine_cafile=...) are for sealing, which e2e=False turns off")
        if password is not None and username is None and sshserver:
            # ipyparallel's password= is the SSH gateway's: with a gateway and no username=, that is
            # what the caller means. (With username=, password= is a testudo login's.)
            check_ipyparallel_arguments({"password": password})
        login = login_arguments(username, password, token_provider, token_from, kerberos, service_principal)
        # A callable passphrase (Hazelcast's ssl_password callable) or a source spec.
        key_passphrase = None
        if callable(key_passphrase_from):
            key_passphrase, key_passphrase_from = key_passphrase_from, None
        elif key_passphrase_from is not None and not isinstance(key_passphrase_from, str):
            raise TypeError("Client(key_passphrase_from=...): a source ('prompt', 'file:PATH', 'env:NAME', "
                            "'command:CMD') or a callable returning the passphrase")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"Client(timeout={timeout!r}): the connection timeout is a number of seconds above 0")
        self.profile = profile or os.environ.get("TESTUDO_PROFILE") or "default"
        file = url_file or connection_file or ""
        self._tunnel = None
        dial_host, dial_port = "", 0
        try:
            # The connection file's gateway applies unless sshserver says otherwise (as in
            # ipyparallel); it is '' when the controller is on this host.
            host, port, file_ssh = _testudo.controller_address(str(file), self.profile)
            if sshserver is None:
                sshserver = file_ssh
            if sshserver:
                # The controller's address as the connection file gives it, reached through the gateway.
                self._tunnel = SshTunnel(sshserver, host, port, key=sshkey, ssh_args=tuple(ssh_args),
                                         timeout=float(timeout))
                dial_host, dial_port = "127.0.0.1", self._tunnel.local_port
            self._native = _testudo.Client(str(file), self.profile, float(timeout), str(identity_dir or ""),
                                           str(key_passphrase_from or ""), dial_host, dial_port, key_passphrase,
                                           e2e="auto" if e2e is None else "on" if e2e else "off", engine_keys=[str(k) for k in engine_keys],
                                           engine_cafile=str(engine_cafile or ""),
                                           bulk_from_bytes=int(bulk_from_bytes or 0), **login)
        except FileNotFoundError as exc:
            self._close_tunnel()
            raise FileNotFoundError(
                f"{exc}; is a cluster running? Start one with "
                f"`testudo --profile {self.profile} cluster start -n 4`") from None
        except BaseException:
            self._close_tunnel()
            raise
        self._closed = False
        self._lock = threading.Lock()
        self._pending = {}  # request id -> AsyncResult, until finished (or swept: see _track)
        self._sweep_at = 1024  # _pending size that triggers the next sweep
        self._ids = []
        self._ids_time = 0.0
        self._history = History()  # every request sent, for rc.history / results / metadata
        self._purged_local = set()  # msg_ids (int) whose results purge_local_results dropped
        self._purged_before = (None, 0)  # (history, entry): purge_local_results('all') dropped those before
        self._dispatcher = threading.Thread(target=self._dispatch, name="testudo-results", daemon=True)
        self._dispatcher.start()
        _live_clients.add(self)
        self._activate_in_ipython()

    def _activate_in_ipython(self):
        """Inside IPython, the first client registers %px and friends, as ipyparallel's does."""
        ipython = sys.modules.get("IPython")  # not imported: not in IPython (and no slow import)
        ip = ipython.get_ipython() if ipython is not None else None
        if ip is not None and "px" not in ip.magics_manager.magics["line"]:
            self.activate()

    # ----- engines -----

    @property
    def ids(self):
        """Sorted ids of the engines registered now."""
        ids = sorted(self._native.engine_ids())
        self._ids, self._ids_time = ids, time.monotonic()
        return list(ids)

    def _cached_ids(self, refresh=False):
        if refresh or time.monotonic() - self._ids_time > self.ids_max_age:
            return self.ids
        return self._ids

    def _engine_at(self, index):
        """The engine id for an int target: itself, or counted from the end of rc.ids when
        negative (ipyparallel's rc[-1])."""
        if index >= 0:
            return index
        ids = self.ids
        if -index > len(ids):
            raise IndexError(f"engine index {index} is out of range: {len(ids)} engine(s) registered ({ids})")
        return ids[index]

    def _build_targets(self, targets):
        """Engine ids for 'all', None, an int (negative: from the end of rc.ids), a slice, a
        range or a list of ints."""
        if targets is None or (isinstance(targets, str) and targets == "all"):
            ids = self._cached_ids()
            if not ids:
                ids = self._cached_ids(refresh=True)
            if not ids:
                raise error.NoEnginesRegistered()
            return list(ids)
        if isinstance(targets, int) and not isinstance(targets, bool):
            targets = [self._engine_at(targets)]
        elif isinstance(targets, slice):
            return self._cached_ids(refresh=True)[targets]
        elif isinstance(targets, range):
            targets = list(targets)
        if not isinstance(targets, (list, tuple)):
            raise TypeError(f"targets must be 'all', an int, a slice or a list of ints, not {type(targets).__name__}")
        for t in targets:
            if not isinstance(t, int) or isinstance(t, bool):
                raise TypeError(f"engine ids are ints, not {t!r}")
        known = set(self._cached_ids())
        if not known.issuperset(targets):
            known = set(self._cached_ids(refresh=True))
            missing = [t for t in targets if t not in known]
            if missing:
                raise IndexError(self._missing_engines_text(missing, known))
        return list(targets)

    def _missing_engines_text(self, missing, known):
        """Why `missing` ids cannot be targets: ids the cluster gave out belong to engines that are
        gone (an id is never given to another engine, so their variables are nowhere now)."""
        try:
            issued = json.loads(self._native.engines_json()).get("next_engine_id", 0)
        except (ConnectionError, ValueError):
            issued = 0
        gone = [t for t in missing if 0 <= t < issued]
        never = [t for t in missing if t not in gone]
        parts = []
        if gone:
            parts.append((f"engine {gone[0]} is gone" if len(gone) == 1 else f"engines {gone} are gone")
                         + ": disconnected or its process ended (a restarted engine gets a new id)")
        if never:
            parts.append(f"engine {never[0]} is not registered" if len(never) == 1
                         else f"engine ids {never} are not registered")
        return "; ".join(parts) + f" (registered: {sorted(known)})"

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, key):
        """rc[0], rc[-1], rc[::2], rc[[0, 3]] -> a DirectView on those engines."""
        if isinstance(key, int):
            engine = self._engine_at(key)
            ids = self.ids
            if engine not in ids:
                raise IndexError(self._missing_engines_text([engine], set(ids)))
            return DirectView(self, engine, block=self.block)
        if isinstance(key, (slice, list, tuple, range)):
            return DirectView(self, self._build_targets(key if not isinstance(key, tuple) else list(key)),
                              block=self.block)
        raise TypeError(f"key by int, slice or list of ints, not {type(key).__name__}")

    def __iter__(self):
        for engine in self.ids:
            yield DirectView(self, engine, block=self.block)

    def engine_tags(self):
        """{engine_id: tags}: host facts (hostname, cores, memory, pid) and `--tag k=v` labels."""
        report = json.loads(self._native.engines_json())
        return {int(k): v for k, v in report.get("tags", {}).items()}

    def select_ids(self, **criteria):
        """Sorted ids of the engines whose tags equal every `criteria` value."""
        return sorted(i for i, tags in self.engine_tags().items()
                      if all(k in tags and tags[k] == v for k, v in criteria.items()))

    def select(self, **criteria):
        """A DirectView on the engines whose tags match: rc.select(gpu=True)."""
        ids = self.select_ids(**criteria)
        if not ids:
            raise error.NoEnginesRegistered()
        return DirectView(self, ids, block=self.block)

    def broadcast_view(self, targets="all", is_coalescing=False, **kwargs):
        """A view whose requests the controller fans out: one message from the client, one
        reply per engine (every multi-engine DirectView request works this way here)."""
        from ._view import BroadcastView
        if targets != "all":
            targets = self._build_targets(targets)
        view = BroadcastView(self, targets, block=self.block)
        view.set_flags(**kwargs)
        return view

    def direct_view(self, targets="all", **kwargs):
        """A DirectView; targets='all' is re-evaluated at each call, as engines come and go."""
        if targets != "all":
            single = isinstance(targets, int)
            targets = self._build_targets(targets)
            if single:
                targets = targets[0]
        view = DirectView(self, targets, block=self.block)
        view.set_flags(**kwargs)
        return view

    def load_balanced_view(self, targets=None, **kwargs):
        """A LoadBalancedView: the controller's scheduler places each task (`targets`: the
        engines it may use, default all; fixed now, so -1 is the last engine registered now)."""
        from ._lbview import LoadBalancedView
        if isinstance(targets, str) and targets == "all":
            targets = None
        if targets is not None:
            targets = self._build_targets(targets)
        return LoadBalancedView(self, targets, **kwargs)

    def wait_for_engines(self, n=None, *, timeout=-1, block=True, interactive=None, widget=None):
        """Wait until at least `n` engines are registered (default: any one engine). Raises
        TimeoutError after `timeout` seconds. With block=False, returns at once a
        concurrent.futures.Future that resolves to None (or to that TimeoutError) instead."""
        n = 1 if n is None else n
        if not block:
            future = concurrent.futures.Future()
            if len(self.ids) >= n:
                future.set_result(None)
                return future

            def wait():
                try:
                    self.wait_for_engines(n, timeout=timeout)
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(None)
            threading.Thread(target=wait, name="testudo-wait-for-engines", daemon=True).start()
            return future
        deadline = time.monotonic() + _seconds(timeout)
        while True:
            count = len(self.ids)
            if count >= n:
                return None
            if time.monotonic() >= deadline:
                raise error.TimeoutError(f"{n} engine(s) not ready in {timeout} seconds; {count} registered")
            time.sleep(0.05)

    # ----- results -----

    def wait(self, jobs=None, timeout=-1):
        """Wait for `jobs`: an AsyncResult, a msg_id (str), a concurrent.futures.Future, or a
        list of those (default: every outstanding request of this client). Returns True if all
        finished within `timeout` seconds.

        As in ipyparallel, a msg_id this client has no outstanding request for counts as
        finished (another client's task, or one whose result is already here)."""
        if jobs is None:
            with self._lock:
                jobs = list({id(a): a for a in self._pending.values()}.values())
        elif isinstance(jobs, (str, int, concurrent.futures.Future)) or not isinstance(jobs, Iterable):
            jobs = [jobs]
        futures, msg_ids = [], set()
        for job in jobs:
            if isinstance(job, concurrent.futures.Future):  # AsyncResults included
                futures.append(job)
            elif isinstance(job, str):
                msg_ids.add(job)
            elif isinstance(job, int) and not isinstance(job, bool):
                msg_ids.add(self.history[job])  # an index into rc.history, as in ipyparallel
            else:
                raise TypeError(f"rc.wait: jobs are AsyncResults, msg_ids (str) or Futures, not {type(job).__name__}")
        if msg_ids:
            futures.extend(self._outstanding_results(msg_ids))
        deadline = time.monotonic() + _seconds(timeout)
        for f in futures:
            left = max(0.0, deadline - time.monotonic())
            if isinstance(f, AsyncResult):
                if not f.wait(left):
                    return False
            elif f not in concurrent.futures.wait([f], left).done:
                return False
        return True

    def wait_interactive(self, jobs=None, interval=1.0, timeout=-1):
        """rc.wait(jobs) with a progress bar of the tasks finished (see AsyncResult.wait_interactive)."""
        from ._progress import progress
        if jobs is None:
            with self._lock:
                jobs = list({id(a): a for a in self._pending.values()}.values())
        elif isinstance(jobs, AsyncResult):
            jobs = [jobs]
        ars = [j for j in jobs if isinstance(j, AsyncResult)]
        others = [j for j in jobs if not isinstance(j, AsyncResult)]
        total = sum(len(ar) for ar in ars)
        start = time.monotonic()
        deadline = start + _seconds(timeout)
        bar = progress(total, "wait")
        bar.update(0, 0)
        done = False
        while time.monotonic() < deadline:
            done = self.wait(ars, timeout=min(interval, max(0.0, deadline - time.monotonic())))
            bar.update(sum(ar.progress for ar in ars), time.monotonic() - start)
            if done:
                break
        if others and done:
            done = self.wait(others, timeout=max(0.0, deadline - time.monotonic()))
        bar.close(sum(ar.progress for ar in ars), time.monotonic() - start, done)
        return done

    def _outstanding_results(self, msg_ids):
        """This client's pending AsyncResults holding any of `msg_ids`."""
        with self._lock:
            pending = list({id(a): a for a in self._pending.values()}.values())
        return [ar for ar in pending if not ar._finished and msg_ids.intersection(ar.msg_ids)]

    @property
    def outstanding(self):
        """msg_ids of the tasks still waiting for replies."""
        with self._lock:
            pending = list({id(a): a for a in self._pending.values()}.values())
        return {i for ar in pending if not ar._finished and not ar._native_ready() for i in ar.msg_ids}

    def _track(self, children, ar):
        pending = self._pending
        with self._lock:
            for child in children:
                pending[child.request_id] = ar
            if len(pending) >= self._sweep_at:
                # Results nobody watches are finished by whoever looks at them, so a finished
                # request may stay here: drop those whose replies are all in (amortised O(1):
                # a sweep only once the map has doubled). Watched ones stay for the dispatcher.
                # A map's result holds one entry per chunk: it is asked once, not once per entry
                # (asking costs a look at every chunk, which made a 10,000-item map quadratic).
                done = _once_per_result(lambda a: a._finished or (not a._watched and a._native_ready()))
                for rid in [rid for rid, a in pending.items() if done(a)]:
                    del pending[rid]
                self._sweep_at = max(1024, 2 * len(pending))

    def _untrack(self, children):
        pending = self._pending
        with self._lock:
            for child in children:
                pending.pop(child.request_id, None)

    def _dispatch(self):
        # Completes futures in the background, so callbacks and asyncio.wrap_future fire
        # without anyone calling get().
        # Each wake-up handles everything finished since the last one, with one lock
        # acquisition for the look-ups.
        native = self._native
        pending = self._pending
        early = []  # (when it came, chunk) of output whose request was not tracked yet
        while not self._closed:
            done = native.next_completed(0.1 if early else 0.5)
            output = native.take_output()
            if output or early:
                # Output can come before its AsyncResult is tracked (the request is sent with
                # the GIL released): kept, in order, and matched again on the next rounds.
                now = time.monotonic()
                with self._lock:
                    found = [(pending.get(c[0]), t, c) for t, c in early + [(now, c) for c in output]]
                early = [(t, c) for ar, t, c in found if ar is None and now - t < 30][-10000:]
                for ar, _, (_, engine, stream, text) in found:
                    if ar is not None:
                        ar._live_output(engine, stream, text)
            if done:
                with self._lock:
                    ars = [pending.get(request_id) for request_id in done]
                for ar in ars:
                    if ar is not None and not ar._finished:
                        ar.ready()

    # ----- task control -----

    def abort(self, jobs=None, targets=None, block=None):
        """Abort queued tasks: `jobs` are AsyncResults or msg_ids (default: all outstanding).
        Running tasks go on (see interrupt). Returns how many tasks were aborted."""
        from ._lbview import _task_ids
        if jobs is None:
            with self._lock:
                jobs = list({id(a): a for a in self._pending.values()}.values())
        return self._native.abort(_task_ids(jobs))

    def interrupt(self, targets="all"):
        """Raise KeyboardInterrupt in whatever runs on `targets` now (like Ctrl-C)."""
        return self._native.interrupt(self._build_targets(targets))

    def send_signal(self, sig, targets=None, block=None):
        """Only SIGINT is supported: the same as interrupt(targets)."""
        import signal
        if sig not in (signal.SIGINT, "SIGINT"):
            raise ValueError("only SIGINT can be sent to engines")
        return self.interrupt("all" if targets is None else targets)

    def queue_status(self, targets="all", verbose=False):
        """{engine_id: {'queue': n, 'tasks': n, 'completed': n}, 'unassigned': n}, as
        ipyparallel's: 'queue' counts the tasks waiting in the controller for the engine, 'tasks'
        those sent to it and not answered, 'unassigned' the load-balanced tasks not on an engine
        yet (those whose dependencies are not met included); every user's tasks.

        verbose=True: lists of msg_ids instead of counts, as ipyparallel's, but of your own
        tasks only (the controller shows a user no one else's), and 'completed' only those whose
        results it still keeps (not purged)."""
        report = json.loads(self._native.queue_status())
        if verbose:
            out = self._queue_lists([int(k) for k in report["engines"]])
        else:
            # ipyparallel's shape: the controller's extra figures (the window, waiting tasks
            # apart from queued ones, the scheme) stay out.
            out = {int(k): {key: v[key] for key in ("queue", "tasks", "completed")}
                   for k, v in report["engines"].items()}
            out["unassigned"] = report["unassigned"] + report["waiting"]
        unassigned = out.pop("unassigned")
        if isinstance(targets, int):
            return out[self._engine_at(targets)]
        if targets != "all":
            wanted = set(self._build_targets(targets))
            out = {k: v for k, v in out.items() if k in wanted}
        out["unassigned"] = unassigned
        return out

    def _queue_lists(self, engines):
        """queue_status(verbose=True) before picking targets: from this user's task records.

        A record names its engine once the task is sent to one; a task still queued names the
        engines it may go to. One engine there is a direct task queued for it, unless this
        client knows the task as load-balanced (placed by the scheduler: 'unassigned'); another
        client's load-balanced task limited to one engine is counted as queued for it."""
        out = {e: {"queue": [], "tasks": [], "completed": []} for e in engines}
        unassigned = []
        balanced = self._pending_balanced_task_ids()
        # The records' states, as queue_status's keys (aborted and lost tasks are in none).
        where = {"queued": "queue", "running": "tasks", "succeeded": "completed", "failed": "completed"}
        for r in self._all_records({"states": sorted(where)}):
            task_id, engine, targets = r["task_id"], r.get("engine"), r.get("targets") or []
            if engine is None and r["state"] == "queued" and len(targets) == 1 and task_id not in balanced:
                engine = targets[0]
            if engine is None:
                if r["state"] == "queued":
                    unassigned.append(str(task_id))
            elif engine in out:
                out[engine][where[r["state"]]].append(str(task_id))
        out["unassigned"] = unassigned
        return out

    def _pending_balanced_task_ids(self):
        """Task ids of this client's unfinished load-balanced requests."""
        with self._lock:
            pending = list({id(a): a for a in self._pending.values()}.values())
        return {i for ar in pending if not ar._finished for child in ar._children
                if _testudo.ANY_ENGINE in child.targets for i in child.task_ids(30.0)}

    def clear(self, targets=None, block=None):
        """Remove every user variable from the engines' namespaces."""
        return self.direct_view("all" if targets is None else targets).clear(block=block)

    def spin(self):
        """Nothing to do: results arrive on the client's own thread (ipyparallel's spin flushes
        its sockets)."""

    def spin_thread(self, interval=1):
        """Nothing to do (see spin)."""

    def stop_spin_thread(self):
        """Nothing to do (see spin)."""

    def executor(self, targets=None):
        """A concurrent.futures.Executor over a LoadBalancedView of `targets` (default all)."""
        return self.load_balanced_view(targets).executor

    # ----- cluster -----

    @property
    def seal_violations(self):
        """What end-to-end sealing caught the controller doing behind this client's back, as
        sentences, oldest first (each is also logged as an error): a balanced request that
        two engines answered genuinely, i.e. the controller handed it to both and it ran
        twice. Always empty when this client does not seal, and with an honest controller."""
        return list(self._native.seal_violations())

    @property
    def e2e(self):
        """Whether this client seals its requests end to end (see the class's docs)."""
        return self._native.sealing()[0]

    @property
    def e2e_off_because(self):
        """Why this client does not seal ('' when it does)."""
        return self._native.sealing()[1]

    def cluster_status(self):
        """The controller's report: engines, clients, tasks."""
        return json.loads(self._native.cluster_status())

    def shutdown(self, targets="all", restart=False, hub=False, block=None):
        """Stop engines (`targets`), or with hub=True the controller and every engine."""
        if restart:
            raise NotImplementedError("restarting engines is not supported")
        if hub:
            self._native.shutdown_cluster()
            return None
        ids = self._build_targets(targets)
        self._native.shutdown_engines(ids)
        if self.block if block is None else block:
            deadline = time.monotonic() + 30
            while set(ids) & set(self.ids) and time.monotonic() < deadline:
                time.sleep(0.05)
        return None

    def become_dask(self, targets="all", port=0, nanny=False, scheduler_args=None, **worker_args):
        """Make the engines (`targets`) the workers of a dask.distributed cluster; returns a
        distributed.Client connected to it. The Scheduler runs in this process (on loopback
        unless scheduler_args say host=...; `port` picks its port) until stop_dask() or
        close(); every dask connection is TLS with keys made for it. `worker_args` go to each
        distributed.Worker (nthreads=1 unless given; ipyparallel's ncores= is read as nthreads)."""
        from ._dask import become_dask
        return become_dask(self, targets, port, nanny, scheduler_args, **worker_args)

    def stop_dask(self, targets="all"):
        """Stop the dask Workers on `targets` and the Scheduler started by become_dask."""
        from ._dask import stop_dask
        stop_dask(self, targets)

    become_distributed = become_dask
    stop_distributed = stop_dask

    def activate(self, targets="all", suffix=""):
        """Register the %px, %%px, %autopx and %pxresult magics for `targets`."""
        view = self.direct_view(targets)
        view.block = True
        view.activate(suffix)
        return view

    # ----- lifetime -----

    def close(self, linger=None):
        """Close the connection; pending results fail with ConnectionError."""
        if self._closed:
            return
        if self._dask is not None:
            try:
                self.stop_dask()
            except Exception:
                pass  # closing goes on: the engines' workers stop when the scheduler is gone
        self._closed = True
        self._native.close()
        self._close_tunnel()
        if self._dispatcher is not threading.current_thread():
            self._dispatcher.join(timeout=5)
        # Requests that were pending are failed by the native layer; finish their futures.
        with self._lock:
            pending = list(self._pending.values())
        for ar in pending:
            ar.ready()

    def _close_tunnel(self):
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self):
        state = "closed" if self._closed else f"client {self._native.client_id}"
        return f"<testudo.Client profile={self.profile!r} {state}>"
