"""Starting and joining Ray: the embedded local instance by default, a named cluster if any;
and what the driver does while Ray places work: refuse what can never be placed, report
what waits, give up after a timeout, and stay responsive to Ctrl-C.
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from raynas.errors import RaynasError

T = TypeVar("T")

# Seconds between two "still waiting" lines.
REPORT_EVERY_S = 5.0


class ResourceError(RaynasError):
    """Ray cannot place what a stage asks for: never (embedded Ray) or not in time."""


def ray_address(configured: str | None) -> str:
    """The job's ``ray.address``, else ``RAY_ADDRESS`` (set by ``ray job submit``), else
    ``"local"``: a fresh embedded instance, never a leftover cluster from ``ray start``."""
    return configured or os.environ.get("RAY_ADDRESS") or "local"


def is_embedded(configured: str | None) -> bool:
    """Whether the job runs on its own embedded Ray (one node, its size known up front)."""
    return ray_address(configured) == "local"


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None,
                resources: dict[str, float] | None = None) -> Iterator[None]:
    """Initialise Ray for the duration of the block, unless it already is (then reuse it).

    ``num_cpus`` and ``resources`` (custom resources, e.g. ``{"target:local-cpu": 1}`` to
    declare this machine a latency target) apply to the embedded local instance only.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    addr = ray_address(address)
    kwargs = {"logging_level": logging.WARNING}
    env: dict[str, str] = {}
    defaults: dict[str, str] = {}
    if addr == "local":
        port = _free_port()
        kwargs.update(num_cpus=num_cpus, resources=dict(resources or {}) or None,
                      include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port)
        # Ray's processes inherit this from the driver: Ray Train's placement-group cleaner
        # asks the state API whether a run's controller lives, and without it looks for
        # "the" Ray on this machine, fails when there are several, and a stopped trial's
        # CPUs stay reserved for ever (`raynas tune` beside another Ray then hangs).
        env[_API_SERVER] = f"http://127.0.0.1:{port}"
        # One machine has no node that Ray drains: Ray Train's preemption watcher (an actor,
        # a Python process, per training run) has nothing to watch.
        defaults[_PREEMPTION] = "0"
    # Workers import raynas from the driver's environment; keep Ray's own chatter down.
    with environ(env, defaults):
        try:
            ray.init(address=addr, **kwargs)
            yield
        finally:
            ray.shutdown()


# Where Ray's state and job clients find the cluster's API server.
_API_SERVER = "RAY_API_SERVER_ADDRESS"
_PREEMPTION = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


@contextlib.contextmanager
def environ(values: dict[str, str], defaults: dict[str, str] | None = None) -> Iterator[None]:
    """Set ``values`` (and ``defaults`` where the variable is unset) in ``os.environ`` for
    the block; put back what was there after it."""
    keys = [*values, *(defaults or {})]
    before = {k: os.environ.get(k) for k in keys}
    os.environ.update(values)
    for key, value in (defaults or {}).items():
        os.environ.setdefault(key, value)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- requests that can never be placed ---------------------------------------------------------
@dataclass(frozen=True)
class Request:
    """What one piece of a stage asks Ray for: ``bundles`` placed together (one per Ray Train
    worker, say), ``strategy`` as in a placement group; ``what`` names it for the user in the
    job's terms, ``hint`` says which settings change it."""

    what: str
    bundles: tuple[dict[str, float], ...]
    strategy: str = "PACK"
    hint: str = ""

    def total(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for bundle in self.bundles:
            for k, v in bundle.items():
                if v:
                    out[k] = out.get(k, 0.0) + float(v)
        return out


def describe_resources(resources: dict[str, float]) -> str:
    """``{"CPU": 2.0, "memory": ...}`` -> ``"2 CPU"``: the resources a user requests (CPU,
    GPU, custom ones), not memory, object store or Ray's per-node markers."""
    shown = {k: v for k, v in resources.items()
             if k not in ("memory", "object_store_memory") and not k.startswith("node:")
             and not k.startswith("accelerator_type:")}
    if not shown:
        return "nothing"
    return ", ".join(f"{v:g} {k}" for k, v in sorted(shown.items(),
                                                   key=lambda kv: (kv[0] != "CPU", kv[0])))


def check_placeable(requests: Sequence[Request], address: str | None,
                    have: dict[str, float] | None = None) -> None:
    """On the embedded Ray (one node, nothing joins it), raise ``ResourceError`` for the first
    request that can never be placed there. On a cluster, do nothing: nodes may join (the
    autoscaler, a `ray start`), so a request is waited for instead (``placement_watch``).

    ``have``: the embedded Ray's resources; by default ``ray.cluster_resources()`` (Ray must
    then be initialised).
    """
    if not is_embedded(address):
        return
    if have is None:
        import ray

        have = ray.cluster_resources()
    for req in requests:
        if req.strategy == "STRICT_SPREAD" and len(req.bundles) > 1:
            raise ResourceError(f"{req.what}: asks for {len(req.bundles)} different nodes "
                                "(STRICT_SPREAD), but the embedded Ray is one node"
                                + (f"; {req.hint}" if req.hint else ""))
        need = req.total()
        short = [k for k, v in need.items() if v > have.get(k, 0.0) + 1e-9]
        if short:
            raise ResourceError(
                f"{req.what}: asks for {describe_resources(need)}, but the embedded Ray has "
                f"{describe_resources(have)}, so it could never be placed"
                + (f"; {req.hint}" if req.hint else ""))


# ---- waiting for placement -----------------------------------------------------------------------
def pending_groups(job: str | None = None) -> list[dict[str, Any]]:
    """This job's placement groups that Ray has not placed yet (Ray Train's worker group,
    Tune's trials), from the GCS (no dashboard needed). ``job``: this driver's job id."""
    import ray

    job = job or ray.get_runtime_context().get_job_id()
    table = ray.util.placement_group_table()
    # A placement group id ends with its creator's job id (Ray's id layout): this keeps
    # other jobs' pending groups on a shared cluster out of the report.
    return [pg for pid, pg in table.items()
            if pg.get("state") in ("PENDING", "RESCHEDULING") and pid.endswith(job)]


def _describe_group(pg: dict[str, Any]) -> str:
    bundles = list(pg.get("bundles", {}).values())
    shapes = {describe_resources(b) for b in bundles}
    body = (f"{len(bundles)} x {{{shapes.pop()}}}" if len(shapes) == 1
            else " + ".join(f"{{{describe_resources(b)}}}" for b in bundles))
    why = (pg.get("stats") or {}).get("scheduling_state")
    return body + (f" ({why.lower().replace('_', ' ')})" if why else "")


def _cluster_line() -> str:
    import ray

    return (f"the cluster has {describe_resources(ray.cluster_resources())} "
            f"({describe_resources(ray.available_resources())} free)")


class _Watch(threading.Thread):
    """Reports this job's pending placement groups every few seconds; past the timeout it
    sets ``timed_out`` (the error message) and interrupts the main thread, which
    ``placement_watch`` turns into a ResourceError."""

    def __init__(self, what: str | None, timeout_s: float | None, every_s: float,
                 say: Callable[[str], None]):
        super().__init__(name="raynas-placement-watch", daemon=True)
        self.what = f"{what}: " if what else ""
        self.timeout_s, self.every_s, self.say = timeout_s, every_s, say
        self.stop = threading.Event()
        self.timed_out: str | None = None
        import ray

        self.job = ray.get_runtime_context().get_job_id()  # here, while Ray is up

    def run(self) -> None:
        import ray

        since: dict[str, float] = {}
        last_report = 0.0
        while not self.stop.wait(1.0):
            # Never a Ray call once Ray is down: some (get_runtime_context) would start a
            # fresh Ray instance from this thread.
            if not ray.is_initialized():
                return
            try:
                pending = {pg["placement_group_id"]: pg for pg in pending_groups(self.job)}
                cluster = _cluster_line() if pending else ""
            except Exception:  # Ray going down under us: nothing left to report
                return
            now = time.monotonic()
            since = {k: since.get(k, now) for k in pending}
            if not since:
                continue
            waited = now - min(since.values())
            groups = "; ".join(_describe_group(pg) for pg in pending.values())
            line = f"{self.what}waiting {waited:.0f} s for Ray to place {groups}; {cluster}"
            if self.timeout_s is not None and waited >= self.timeout_s:
                self.timed_out = (f"{self.what}Ray could not place {groups} within "
                                  f"ray.placement_timeout_s = {self.timeout_s:g} s; {cluster}")
                # Wakes the main thread as Ctrl-C would; placement_watch says why.
                _thread.interrupt_main()
                return
            if waited >= self.every_s and now - last_report >= self.every_s:
                self.say(line)
                last_report = now


_WATCHES: list[_Watch] = []  # the active ones, innermost last


def placement_timed_out() -> str | None:
    """Why the innermost active ``placement_watch`` stopped its block (its error message),
    or None: a KeyboardInterrupt seen inside the block is then a real Ctrl-C."""
    return _WATCHES[-1].timed_out if _WATCHES else None


@contextlib.contextmanager
def placement_watch(what: str | None = None, timeout_s: float | None = None,
                    every_s: float = REPORT_EVERY_S,
                    say: Callable[[str], None] | None = None) -> Iterator[None]:
    """While the block runs (in the main thread), report this job's placement groups that
    wait to be placed every ``every_s`` seconds, and stop the block with ``ResourceError``
    once one has waited ``timeout_s`` (None: wait for ever). Ray must be initialised."""
    watch = _Watch(what, timeout_s, every_s, say or _say)
    # Ctrl-C and the timeout both arrive as KeyboardInterrupt, by Python's own handler: not a
    # handler left behind by Ray Train (it waits for a controller that may be gone) or Ray
    # Tune (it ends the search quietly, as if it had finished).
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler) if main else None
    watch.start()
    _WATCHES.append(watch)
    try:
        with environ({_TUNE_SIGINT: "1"}):  # read by Ray Tune when a search starts
            yield
    except KeyboardInterrupt:
        if watch.timed_out:
            raise ResourceError(watch.timed_out) from None
        raise
    finally:
        _WATCHES.remove(watch)
        watch.stop.set()
        watch.join(5.0)  # done before Ray goes down (at most one GCS call in flight)
        if main and previous is not None:  # None: a handler not set from Python
            signal.signal(signal.SIGINT, previous)


# Ray Tune's own SIGINT handler would end a search on Ctrl-C and return as if it had finished.
_TUNE_SIGINT = "TUNE_DISABLE_SIGINT_HANDLER"


def wait_ready(ref: Any, what: str, timeout_s: float | None,
               every_s: float = REPORT_EVERY_S, say: Callable[[str], None] | None = None,
               timeout_message: str | None = None, report: bool = True) -> Any:
    """``ray.get(ref)`` for an actor's first call (its ``ready``; a list: several actors'):
    while an actor is not up yet (placed, then constructed) say so every ``every_s`` seconds
    (unless ``report`` is false: on the embedded Ray a wait is only the actor starting), and
    raise
    ``ResourceError`` after ``timeout_s`` (None: wait for ever)."""
    import ray

    say = (say or _say) if report else (lambda message: None)
    t0 = time.monotonic()
    while True:
        waited = time.monotonic() - t0
        step = every_s if timeout_s is None else max(0.0, min(every_s, timeout_s - waited))
        refs = ref if isinstance(ref, list) else [ref]
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=step)
        if len(done) == len(refs):
            return ray.get(ref)
        waited = time.monotonic() - t0
        if timeout_s is not None and waited >= timeout_s:
            raise ResourceError(timeout_message or (
                f"{what}: not placed and started within {timeout_s:g} s "
                f"(ray.placement_timeout_s); {_cluster_line()}"))
        say(f"waiting {waited:.0f} s for {what} to be placed and start; {_cluster_line()}")


def run_in_thread(fn: Callable[[], T], name: str) -> T:
    """``fn()`` in a worker thread, while this (main) thread waits in short steps, so that
    Ctrl-C (and ``placement_watch``'s timeout) reach it at once.

    For calls that would otherwise own the main thread: Ray Train's ``fit()`` installs a
    SIGINT handler there that waits for its controller to abort (for ever while the worker
    group cannot be placed), and leaves it installed afterwards. On Ctrl-C the worker thread
    is left behind, blocked in Ray; shutting Ray down (or leaving the cluster, which ends
    this job's actors) releases it.
    """
    box: dict[str, Any] = {}
    done = threading.Event()  # not Thread.is_alive: a join cut short by Ctrl-C falsifies it

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed to the main thread, raised there
            box["error"] = exc
        finally:
            done.set()

    worker = threading.Thread(target=target, name=f"raynas-{name}", daemon=True)
    worker.start()
    try:
        while not done.wait(0.5):  # short waits: a signal is handled between them
            pass
    except BaseException:
        _LEFT_BEHIND.append(done)
        raise
    if "error" in box:
        raise box["error"]
    return box["result"]


# The "done" events of worker threads run_in_thread left blocked in Ray (Ctrl-C, a
# placement timeout).
_LEFT_BEHIND: list[threading.Event] = []


def threads_left_in_ray() -> bool:
    """Whether a thread that ``run_in_thread`` left behind is still inside Ray. The process
    must then end with ``os._exit``: Python's own shutdown would finalise Ray's extension
    under that thread, which can crash the process (SIGSEGV) after its work is done."""
    return any(not done.is_set() for done in _LEFT_BEHIND)


def _say(message: str) -> None:
    print(f"[raynas] {message}", flush=True)


# ---- fault injection for the tests of --resume ---------------------------------------------------
@dataclass
class _Faults:
    spec: str = field(default_factory=lambda: os.environ.get("RAYNAS_TEST_KILL_AT", ""))
    passed: dict[str, int] = field(default_factory=dict)


_FAULTS = _Faults()


def kill_point(name: str) -> None:
    """``RAYNAS_TEST_KILL_AT=name:N``: the driver SIGKILLs itself the N-th time it passes
    ``name`` (tests use it to lose the driver in an exact window, e.g. between writing a
    record to Parquet and logging it to MLflow). Unset, it costs one string compare."""
    if not _FAULTS.spec:
        return
    point, _, count = _FAULTS.spec.partition(":")
    if point != name:
        return
    _FAULTS.passed[name] = _FAULTS.passed.get(name, 0) + 1
    if _FAULTS.passed[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
