"""Run a function over many items in batches, locally or on a Dask cluster (no business logic).

:func:`run_batched` is the one entry point of campaigns, sweeps and random checks: it cuts
``items`` into batches, runs ``fn`` on every item of a batch in one task, and yields the results
as the batches complete (completion order, not item order: callers that need an order carry
an index in their items). At most a few batches per worker are in flight, so a million items
never sit in memory at once, neither here nor in the scheduler.

Executors (:data:`EXECUTORS`):

* ``local`` (default, no extra dependency): in this process with ``workers <= 1``, else a pool
  of ``workers`` forked processes;
* ``dask``: a :class:`distributed.Client` on ``scheduler`` (``tcp://HOST:PORT``, an existing
  cluster), or, without one, on a fresh :class:`distributed.LocalCluster` of ``workers``
  single-threaded worker processes, closed at the end. ``distributed`` is imported only here,
  on use; without it :class:`ExecutorUnavailable` says how to install it. On the worker, each
  batch runs in a forked child (:func:`_call_batch_forked`): a worker process has its own
  threads and connections coming and going, which per-run resource checks must not see.

``fn`` must be a module-level function (tasks carry it by reference), and so must the items'
types be importable on the workers: a remote cluster must run the same package version.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import pickle
import queue
from collections.abc import Callable, Iterable, Iterator, Sized
from itertools import islice
from typing import Any, Literal, TypeVar, cast, get_args

T = TypeVar("T")
R = TypeVar("R")

ExecutorName = Literal["local", "dask"]
#: The executor names the CLI offers.
EXECUTORS: tuple[str, ...] = get_args(ExecutorName)
#: What to install for ``--executor dask``.
INSTALL_HINT = "pip install 'vfio-user-mig[cluster]'"
#: Batches in flight per worker thread (one running, one queued behind it).
INFLIGHT_PER_WORKER = 2


class ExecutorError(RuntimeError):
    """The executor could not run (unknown name, unreachable scheduler, ...)."""


class ExecutorUnavailable(ExecutorError):
    """The Dask executor was asked for but ``distributed`` is not installed."""


def auto_batch_size(items: int, workers: int, *, low: int = 50, high: int = 500) -> int:
    """Items per task: about 8 batches per worker, within [``low``, ``high``], but never so
    large that some worker gets nothing (at most ``ceil(items / workers)``); at least 1."""
    workers = max(workers, 1)
    per_worker = math.ceil(items / workers) if items > 0 else 1
    size = math.ceil(items / (workers * 8)) if items > 0 else 1
    return max(1, min(max(size, min(low, per_worker)), high))


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def _call_batch(fn: Callable[[T], R], batch: list[T]) -> list[R]:
    """The task: ``fn`` on every item of ``batch``, in order."""
    return [fn(item) for item in batch]


def _call_batch_forked(fn: Callable[[T], R], batch: list[T]) -> list[R]:
    """The task in a forked child of this process: the child runs :func:`_call_batch` alone
    (one thread, no other activity), so per-process checks of the items (open fds, live
    threads) do not see the host's own threads and connections (a Dask worker's); the results
    (or the exception) come back pickled through a pipe."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; reported through the pipe
        status = 0
        try:
            os.close(rfd)
            try:
                data = pickle.dumps((True, _call_batch(fn, batch)))
            except BaseException as exc:  # handed to the parent
                try:
                    data = pickle.dumps((False, exc))
                except Exception:
                    data = pickle.dumps((False, RuntimeError(repr(exc))))
            with os.fdopen(wfd, "wb") as out:
                out.write(data)
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as inp:
        data = inp.read()
    _, wait_status = os.waitpid(pid, 0)
    if not data:
        raise ExecutorError(f"batch process {pid} died (wait status {wait_status}) "
                            "without a result")
    ok, value = pickle.loads(data)
    if not ok:
        raise value
    return cast("list[R]", value)


def run_batched(fn: Callable[[T], R], items: Iterable[T], *, executor: str = "local",
                scheduler: str | None = None, workers: int = 1,
                batch_size: int | None = None, total: int | None = None) -> Iterator[R]:
    """Yield ``fn(item)`` for every item, as batches complete.

    ``batch_size`` None: :func:`auto_batch_size` of ``total`` (or ``len(items)``) and the
    worker count. ``scheduler`` (Dask only): the address of an existing cluster. Raises
    :class:`ExecutorUnavailable` at once when ``distributed`` is missing, and
    :class:`ExecutorError` on the first ``next()`` when the cluster cannot be reached; an
    exception raised by ``fn`` propagates from the iteration.
    """
    if executor not in EXECUTORS:
        raise ExecutorError(f"unknown executor {executor!r} (expected one of "
                            f"{', '.join(EXECUTORS)})")
    if scheduler is not None and executor != "dask":
        raise ExecutorError("--scheduler needs --executor dask")
    if total is None:
        total = len(items) if isinstance(items, Sized) else 0
    size = batch_size if batch_size is not None else auto_batch_size(total, workers)
    if size < 1:
        raise ExecutorError(f"batch size must be >= 1, not {size}")
    batches = _batches(items, size)
    if executor == "dask":
        return _run_dask(_import_distributed(), fn, batches, scheduler, workers)
    if workers <= 1:
        return (fn(item) for batch in batches for item in batch)
    return _run_pool(fn, batches, workers)


def _pin_worker(counter: Any) -> None:
    """Pool initializer: worker ``i`` (in start order) runs on the ``i``-th allowed CPU
    (modulo their number), so workers never share a CPU while another idles, and the threads
    of a worker (a run's thread-isolated servers) stay on its CPU. A no-op with one CPU or
    where affinity is not supported."""
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    try:
        allowed = sorted(os.sched_getaffinity(0))
        if len(allowed) > 1:
            os.sched_setaffinity(0, {allowed[index % len(allowed)]})
    except (AttributeError, OSError):
        pass


def _run_pool(fn: Callable[[T], R], batches: Iterator[list[T]], workers: int) -> Iterator[R]:
    """Forked worker processes (one CPU each: :func:`_pin_worker`), at most
    :data:`INFLIGHT_PER_WORKER` batches each in flight."""
    done: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
    ctx = mp.get_context("fork")
    with ctx.Pool(workers, initializer=_pin_worker, initargs=(ctx.Value("i", 0),)) as pool:

        def submit() -> bool:
            batch = next(batches, None)
            if batch is None:
                return False
            pool.apply_async(_call_batch, (fn, batch), callback=lambda r: done.put((True, r)),
                             error_callback=lambda e: done.put((False, e)))
            return True

        inflight = 0
        while inflight < workers * INFLIGHT_PER_WORKER and submit():
            inflight += 1
        while inflight:
            ok, value = done.get()
            inflight -= 1
            if not ok:
                raise value
            inflight += submit()
            yield from value


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise ExecutorUnavailable(f"--executor dask needs the 'distributed' package: "
                                  f"{INSTALL_HINT}") from exc
    return distributed


def _connect(distributed: Any, scheduler: str | None, workers: int) -> tuple[Any, Any]:
    """(client, cluster or None): a client on ``scheduler`` or on a new local cluster."""
    import logging

    if scheduler is None:
        cluster = distributed.LocalCluster(
            n_workers=max(workers, 1), threads_per_worker=1, processes=True,
            dashboard_address=None, silence_logs=logging.ERROR)
        try:
            return distributed.Client(cluster), cluster
        except BaseException:
            cluster.close()
            raise
    try:
        return distributed.Client(scheduler, timeout="10s"), None
    except (OSError, TimeoutError, ValueError) as exc:
        raise ExecutorError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from exc


def _run_dask(distributed: Any, fn: Callable[[T], R], batches: Iterator[list[T]],
              scheduler: str | None, workers: int) -> Iterator[R]:
    """Batches as Dask tasks, at most :data:`INFLIGHT_PER_WORKER` per worker thread in flight.

    Connecting happens on the first ``next()``; the client (and a local cluster it started)
    is closed when the iteration ends, however it ends."""
    client, cluster = _connect(distributed, scheduler, workers)
    try:
        threads = sum(client.nthreads().values()) or max(workers, 1)
        pending = distributed.as_completed()

        def submit() -> bool:
            batch = next(batches, None)
            if batch is None:
                return False
            pending.add(client.submit(_call_batch_forked, fn, batch, pure=False))
            return True

        for _ in range(threads * INFLIGHT_PER_WORKER):
            if not submit():
                break
        for future in pending:
            results: list[R] = future.result()
            future.release()
            submit()
            yield from results
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def add_executor_args(p: argparse.ArgumentParser, what: str, sizes: str) -> None:
    """``--executor``, ``--scheduler`` and ``--batch-size`` for a command that fans out
    ``what`` (``sizes``: the default batch sizes, for the help)."""
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help=f"where the {what} run: local (default: this process, or --workers "
                        "forked processes) or dask (a local Dask cluster of --workers "
                        "processes, or the cluster at --scheduler; needs "
                        f"{INSTALL_HINT})")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="with --executor dask: the scheduler of an existing cluster "
                        "(tcp://HOST:PORT)")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help=f"{what} per task (default: from their count and the workers, "
                        f"{sizes})")


__all__ = [
    "EXECUTORS",
    "INSTALL_HINT",
    "ExecutorError",
    "ExecutorName",
    "ExecutorUnavailable",
    "add_executor_args",
    "auto_batch_size",
    "run_batched",
]
