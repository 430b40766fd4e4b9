"""``--workers K`` / ``--scheduler ADDRESS``: the shards' rounds on a Dask cluster (DESIGN.md §7).

One trainer actor per worker (:class:`~streamsgd.train.shards.ShardWorker`) hosts shards
k, k + K, …; it reads them straight from the store (no data passes through the driver) and
answers each round with its shards' gradient sums. The driver adds them in shard order and
makes the update, so the model is the in-process ``--shards S`` model, bit for bit, for any K.

A round that loses a worker (the actor call fails, or gets no answer within
``round_timeout``) is discarded: the driver waits for the worker to leave the scheduler and
for a replacement to join (a ``LocalCluster``'s nanny restarts it), places the shards on
the workers it then has, and reruns the round. A shard's place is a function of (epoch,
round), so the rerun reads the same rows and the model stays bit-identical.

Pitfalls from the trackers, avoided here: placement is a preference, never a hard pin (a
restarted worker has a new address, and a hard pin would hang); the actors' methods are
plain (they run in the worker's actor thread, the kernels release the GIL); workers get
``NUMBA_NUM_THREADS=1``; nothing is ``scatter``ed (it would die with its worker).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from typing import Any

import numpy as np

from ..compute.sparse import state_bytes
from ..config import FitConfig
from ..errors import SourceError, StreamSGDError, UsageError
from ..train.shards import ShardJob, ShardWorker

#: seconds a round waits for its answers before its workers count as lost; the first round
#: of an epoch opens every shard's first window, which on an object store can take a while
ROUND_TIMEOUT = 600.0
#: seconds the driver waits for a lost worker's replacement before placing its shards on
#: the workers left
REPLACE_TIMEOUT = 60.0
#: tries of one round before the run stops (a checkpoint lets --resume continue)
ROUND_TRIES = 5
#: a worker's Dask memory limit beyond its share of --memory-limit: the interpreter and the
#: libraries (its idle footprint), so that Dask's nanny (which kills at 95 %) never sees our
#: bounded windows as a leak
WORKER_IDLE_BYTES = 1 << 30
#: packages whose versions must match between the driver and every worker (the compiled
#: kernels and the readers must compute the same bits)
PINNED = ("streamsgd", "numpy", "numba", "pyarrow", "dask", "distributed")
_POLL = 0.05  # seconds between looks at the scheduler while waiting for a worker


def _need_dask() -> Any:
    try:
        import distributed
    except ImportError:
        raise UsageError("--workers/--scheduler need Dask: pip install 'streamsgd[dask]'") from None
    return distributed


def _versions() -> dict[str, str]:
    """The pinned packages' versions in this process (run on every worker too)."""
    return {name: metadata.version(name) for name in PINNED}


@contextmanager
def cluster_for(config: FitConfig) -> Iterator[tuple[FitConfig, DaskCluster | None]]:
    """The cluster ``config`` asks for (--workers, --scheduler, --scheduler-file), closed on
    exit, and the config with its shards fixed (one per worker of an existing cluster when
    --shards is not given); (config, None) when it asks for none."""
    if not config.cluster:
        yield config, None
        return
    with DaskCluster(workers=config.workers, scheduler=config.scheduler, scheduler_file=config.scheduler_file,
                     memory_limit=config.memory_limit, shards=config.n_shards) as cluster:
        if config.shards is None:
            config = dataclasses.replace(config, shards=cluster.n_workers)
        yield config, cluster


class DaskCluster:
    """A Dask client for a run: an embedded ``LocalCluster`` of ``workers`` single-threaded
    processes, or a connection to the scheduler at ``scheduler`` (or in ``scheduler_file``).
    Calling it with a :class:`ShardJob` gives the run's backend; :meth:`close` stops what it
    started. Connecting waits as long as Dask's ``distributed.comm.timeouts.connect``."""

    def __init__(self, *, workers: int | None = None, scheduler: str | None = None,
                 scheduler_file: str | None = None, memory_limit: int = 0, shards: int = 1,
                 round_timeout: float = ROUND_TIMEOUT, replace_timeout: float = REPLACE_TIMEOUT) -> None:
        distributed = _need_dask()
        import dask

        # Dask's own setting (DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT), for the workers too
        connect_timeout = dask.utils.parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"))
        self.round_timeout, self.replace_timeout = round_timeout, replace_timeout
        self.cluster: Any = None
        where = scheduler or scheduler_file
        try:
            if where is None:
                k = int(workers or 1)
                hosted = -(-max(shards, k) // k)  # shards on the busiest worker, each given memory_limit // S
                self.cluster = distributed.LocalCluster(
                    n_workers=k, threads_per_worker=1, processes=True, host="127.0.0.1",
                    dashboard_address="127.0.0.1:0",  # any free port: never "8787 is already in use"
                    memory_limit=hosted * (memory_limit // max(shards, 1)) + WORKER_IDLE_BYTES if memory_limit else 0,
                    env={"NUMBA_NUM_THREADS": "1"}, silence_logs=False)  # the caller's logging stays as it is
                self.client = distributed.Client(self.cluster, timeout=connect_timeout)
            else:
                self.client = distributed.Client(scheduler, scheduler_file=scheduler_file, timeout=connect_timeout)
                self.client.wait_for_workers(1, timeout=connect_timeout)
        except (OSError, TimeoutError) as exc:
            self.close()
            raise SourceError(f"the Dask scheduler {where or '(embedded)'} is unreachable or has no workers "
                              f"({exc}); check the address and that its workers run") from None
        self.n_workers = len(self.client.nthreads())
        self._check_versions()

    def _check_versions(self) -> None:
        ours = _versions()
        for worker, theirs in self.client.run(_versions).items():
            for name, version in theirs.items():
                if version != ours[name]:
                    self.close()
                    raise UsageError(f"the Dask worker {worker} has {name} {version}, this process {ours[name]}: "
                                     "install the same versions on the driver and every worker")

    def __call__(self, job: ShardJob) -> DaskBackend:
        return DaskBackend(self, job)

    def close(self) -> None:
        """Close the client, and the cluster if this object started it."""
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
        if self.cluster is not None:
            self.cluster.close()

    def __enter__(self) -> DaskCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DaskBackend:
    """The rounds of one run on a :class:`DaskCluster`'s workers (see the module)."""

    def __init__(self, cluster: DaskCluster, job: ShardJob) -> None:
        self.cluster, self.client, self.job = cluster, cluster.client, job
        self.wanted = min(cluster.n_workers, job.shards)  # workers the shards can use
        self.actors: list[tuple[Any, list[int], str]] = []  # (actor, its shards, its worker)
        self._place()

    def _place(self) -> None:
        """One actor per worker (at most one per shard), hosting shards i, i + K, …"""
        workers = sorted(self.client.nthreads())[: self.job.shards]
        if not workers:
            raise SourceError("the Dask cluster has no workers left; start workers, then --resume")
        k = len(workers)
        hosts = [(address, list(range(i, self.job.shards, k))) for i, address in enumerate(workers)]
        self._check_memory(hosts)
        futures = [self.client.submit(ShardWorker, self.job, shards, actor=True, workers=[address],
                                      allow_other_workers=True, pure=False) for address, shards in hosts]
        actors = [future.result(timeout=self.cluster.round_timeout) for future in futures]
        where = self.client.who_has(futures)
        self.actors = [(actor, shards, (where.get(future.key) or [address])[0])
                       for actor, future, (address, shards) in zip(actors, futures, hosts)]
        self._futures = futures  # the actors live while their futures do

    def _check_memory(self, hosts: list[tuple[str, list[int]]]) -> None:
        """Refuse workers whose Dask memory limit cannot hold their shards: each shard's windows,
        readers and hashed state (its copy of the table, ``compute.sparse.state_bytes``) within
        memory_limit // S, as the plan gave them (shrinking a window would change the model)."""
        limits = {address: info.get("memory_limit") or 0
                  for address, info in self.client.scheduler_info()["workers"].items()}
        for address, shards in hosts:
            need = len(shards) * self.job.shard_memory
            if 0 < limits.get(address, 0) < need:
                raise UsageError(self._too_small(address, limits[address], len(shards), min(limits.values())))

    def _too_small(self, address: str, limit: int, hosted: int, smallest: int) -> str:
        """The one-line refusal of a worker holding ``hosted`` shards under ``limit`` bytes: what
        they need, and what works instead (``smallest``: the least limit of any worker)."""
        job, mib = self.job, 2**20
        share, need = job.shard_memory, hosted * job.shard_memory
        hashed = state_bytes(job.hash_bits, job.hash_outputs) if job.hash_bits else 0
        table = f", of which {hashed / mib:.0f} MiB its copy of the hashed table (--hash-bits {job.hash_bits})" \
            if hashed else ""
        fixes = [f"give the workers at least {math.ceil(need / mib)} MiB"]
        if smallest >= share:  # each worker holds smallest // share shards
            workers = -(-job.shards // (smallest // share))
            fixes.append(f"use {workers} workers (--workers {workers}; the model stays the same)")
        lower = smallest // hosted * job.shards  # the --memory-limit whose shares fit as placed now
        if lower // job.shards >= 2 * hashed:
            fixes.append(f"lower --memory-limit to {lower // mib}MiB (the windows, so the model, change)")
        return (f"the Dask worker {address} has a memory limit of {limit / mib:.0f} MiB; its {hosted} shard(s) need "
                f"{need / mib:.0f} MiB (--memory-limit / --shards = {share / mib:.0f} MiB each{table}): "
                + ", or ".join(fixes))

    def ask(self, method: str, *args: Any) -> list[Any]:
        """Every shard's answer to ``ShardWorker.method(*args)`` (a round), in shard order; a
        lost worker reruns the round on the workers there are then."""
        args = tuple(a.copy() if isinstance(a, np.ndarray) else a for a in args)  # the driver updates its own
        for _ in range(ROUND_TRIES):
            try:
                return self._ask(method, args)
            except StreamSGDError:
                raise  # the data's or the store's own error, raised on a worker: not a lost worker
            except (OSError, TimeoutError, RuntimeError) as exc:
                self._recover(exc)
        raise SourceError(f"a round failed on {ROUND_TRIES} placements of the shards; check the cluster's "
                          "workers, then --resume")

    def rejob(self, job: ShardJob) -> None:
        """Every actor's shards take ``job``, and so do the actors placed after a loss."""
        self.job = job
        self.ask("rejob", job)

    def _ask(self, method: str, args: tuple[Any, ...]) -> list[Any]:
        calls = [getattr(actor, method)(*args) for actor, _, _ in self.actors]
        parts: list[Any] = [None] * self.job.shards
        answered = 0
        for call, (_, shards, _) in zip(calls, self.actors):
            for shard, part in zip(shards, call.result(timeout=self.cluster.round_timeout)):
                parts[shard] = part
                answered += 1
        assert answered == self.job.shards  # every shard answered
        return parts

    def _recover(self, exc: BaseException) -> None:
        """After a failed round: wait until the workers that stopped answering have left the
        scheduler and replacements have joined (or ``replace_timeout`` passed), then place
        every shard afresh (the new actors seek to the round themselves)."""
        logging.getLogger("streamsgd").warning("a Dask worker was lost (%s); rerunning the round", exc)
        placed = {address for _, _, address in self.actors}
        self._drop()
        deadline = time.monotonic() + self.cluster.replace_timeout
        while time.monotonic() < deadline:
            try:
                alive = set(self.client.nthreads())
            except OSError as lost:
                raise SourceError(f"the Dask scheduler is unreachable ({lost}); --resume from the checkpoint") from None
            if len(alive) >= self.wanted and not self._silent(placed & alive):
                break
            time.sleep(_POLL)  # waiting on the cluster (a nanny restarting a worker), not on our threads
        self._place()

    def _silent(self, workers: set[str]) -> bool:
        """Whether any of ``workers`` (still listed by the scheduler) fails to answer."""
        try:
            self.client.run(os.getpid, workers=sorted(workers), on_error="raise")
        except (OSError, TimeoutError):
            return True
        return False

    def _drop(self) -> None:
        self.actors, self._futures = [], []

    def close(self) -> None:
        """Stop every actor's readers (best effort: a lost worker has nothing left to stop)."""
        for actor, _, _ in self.actors:
            try:
                actor.close().result(timeout=self.cluster.round_timeout)
            except (OSError, TimeoutError, RuntimeError):
                pass
        self._drop()
