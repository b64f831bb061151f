"""Where a cohort's volumes run: local worker processes, or Ray actors; and the driver loop both share.

Both engines run the same per-volume function (:meth:`rlp.cohort.work.Worker.run`) in workers that
load the bundle once. An engine has ``slots`` (volumes in flight at once: one per worker, so a lost
worker can only have lost the volume it held), ``submit(task)`` returning a handle,
``wait(handles)`` returning the finished ones, and ``outcome(handle)`` returning the row or
raising :class:`WorkerLost`. :func:`drive` keeps every slot busy, retries a volume whose worker was
lost up to ``retries`` more times, then records it as failed with the reason; a bad volume fails
at once (it would fail again).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
from collections import deque
from typing import Callable, Iterable

from rlp.runtime.backends import GPU_BACKENDS
from rlp.runtime.core.errors import Unavailable

from .work import BundleSpec, Settings, SetupFailed, failed_row, init_process, run_in_process


class WorkerLost(Exception):
    """The worker holding a volume died (killed, out of memory, its node lost)."""


def split_threads(workers: int, threads: int | None, cores: int | None = None) -> tuple[int, int]:
    """(workers, onnxruntime threads per worker) with workers x threads <= cores."""
    cores = cores or os.cpu_count() or 1
    workers = max(1, min(workers, cores))
    return workers, max(1, min(threads or cores // workers, cores // workers))


def _context():
    """``forkserver`` where there is one (Linux, macOS): workers are forked from a clean server process that
    has imported the runtime once (no onnxruntime session or thread pool is ever forked, and a worker
    that replaces a dead one starts in milliseconds); ``spawn`` elsewhere."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["rlp.cohort.work"])
        return ctx
    return multiprocessing.get_context("spawn")


class LocalEngine:
    """Worker processes on this machine (``concurrent.futures``), each with its own bundle and session."""

    name = "local"

    def __init__(self, spec: BundleSpec, settings: Settings, workers: int):
        self.spec, self.settings, self.slots = spec, settings, workers
        self.pool = self._pool()

    def _pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(self.slots, mp_context=_context(),
                                      initializer=init_process, initargs=(self.spec, self.settings))

    def submit(self, task: dict):
        try:
            return self.pool.submit(run_in_process, task)
        except cf.BrokenExecutor:  # a worker died: the pool is unusable, start another
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._pool()
            return self.pool.submit(run_in_process, task)

    def wait(self, handles: Iterable) -> list:
        return list(cf.wait(list(handles), return_when=cf.FIRST_COMPLETED).done)

    def outcome(self, handle) -> dict:
        try:
            return handle.result()
        except cf.BrokenExecutor as exc:
            raise WorkerLost(f"its worker process died ({type(exc).__name__})") from None

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class RayEngine:
    """Ray actors, one bundle each (loaded in the actor's constructor, reused for every volume it scores).

    Why actors, not Ray Data's ``map_batches`` or plain tasks: a volume is the unit of work and of
    failure (one file in, one atomic output set out), not a row of a tabular batch, so Ray Data's
    batching and its object-store blocks buy nothing and would hold whole volumes in the object store;
    plain tasks would load and verify the bundle again for every volume. An actor keeps one verified
    bundle and its onnxruntime session. Actors are started with ``max_restarts=-1`` (Ray restarts a
    dead actor, which loads the bundle again) and ``max_task_retries=0`` (the driver, not Ray, decides
    whether a lost volume is tried again, so that retries stay bounded and are counted in the index).
    GPU backends get ``num_gpus=1`` per actor (written against Ray's documented API; not exercised
    here: no GPU in CI).
    """

    name = "ray"

    def __init__(self, spec: BundleSpec, settings: Settings, address: str, workers: int | None, threads: int):
        try:
            import ray
        except ModuleNotFoundError:
            raise Unavailable("--ray needs the Python package 'ray', which is not installed: "
                              "pip install -e '.[cpu,scale]'") from None
        self.ray = ray
        self.started = not ray.is_initialized()  # shut down again at the end only if this run started it
        if self.started:
            ray.init(address=None if address == "auto" else address, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        gpu = spec.backend in GPU_BACKENDS
        cpus = int(ray.cluster_resources().get("CPU", 1))
        if gpu:
            gpus = int(ray.cluster_resources().get("GPU", 0))
            if gpus < 1:
                raise Unavailable(f"--backend {spec.backend} needs GPUs, and the Ray cluster has none")
            workers = workers or gpus
        self.slots = max(1, workers or cpus // max(1, threads))
        actor = ray.remote(num_cpus=threads, num_gpus=1 if gpu else 0, max_restarts=-1, max_task_retries=0)(_Actor)
        self.actors = [actor.remote(spec, settings) for _ in range(self.slots)]
        self.free = deque(self.actors)
        self.held: dict = {}  # object ref -> actor

    def submit(self, task: dict):
        actor = self.free.popleft()
        ref = actor.run.remote(task)
        self.held[ref] = actor
        return ref

    def wait(self, handles: Iterable) -> list:
        done, _ = self.ray.wait(list(handles), num_returns=1)
        return done

    def outcome(self, handle) -> dict:
        from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError

        self.free.append(self.held.pop(handle))
        try:
            return self.ray.get(handle)
        except (RayActorError, WorkerCrashedError) as exc:
            raise WorkerLost(f"its Ray actor died ({type(exc).__name__})") from None
        except RayTaskError as exc:  # the actor could not load the bundle (SetupFailed), or a bug
            raise SetupFailed(str(exc.cause) if exc.cause is not None else str(exc).splitlines()[0]) from None

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        if self.started:
            self.ray.shutdown()


class _Actor:
    """A Ray actor around one Worker (a constructor error is raised with each call, not as a dead actor
    that ``max_restarts`` would start again and again)."""

    def __init__(self, spec: BundleSpec, settings: Settings):
        init_process(spec, settings)

    def run(self, task: dict) -> dict:
        return run_in_process(task)


def drive(engine, tasks: list[dict], retries: int, on_row: Callable[[dict], None]) -> None:
    """Run every task on ``engine``; ``on_row`` gets each volume's row (ok or failed) as it finishes.

    A volume whose worker was lost goes back to the front of the queue, at most ``retries`` times; its
    row's ``attempts`` counts every try."""
    queue = deque(tasks)
    lost: dict[int, int] = {}  # task number -> tries that lost their worker
    flying: dict = {}  # handle -> task
    while queue or flying:
        while queue and len(flying) < engine.slots:
            task = queue.popleft()
            flying[engine.submit(task)] = task
        for handle in engine.wait(flying):
            task = flying.pop(handle)
            tries = lost.get(task["n"], 0) + 1
            try:
                row = engine.outcome(handle)
            except WorkerLost as exc:
                lost[task["n"]] = tries
                if tries <= retries:
                    queue.appendleft(task)
                    continue
                row = failed_row(task, f"{task['path']}: {exc}; tried {tries} times")
            on_row({**row, "n": task["n"], "attempts": tries})
