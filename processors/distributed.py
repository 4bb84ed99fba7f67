"""`opmon process --dask`: reprocess a run on a Dask cluster, with the maps one process gives.

A run's maps are split into tasks of whole HDF5 chunks (frames [a, b) of one map entry). Each
task opens its file in the worker (h5py handles do not cross processes), runs the same
`MomentAccumulator` as `opmon process` over its frames and returns the additive sums; the sums
of one map merge pairwise in a tree on the cluster, and the client finalizes and writes the
same maps file (atomically) as one process. Per-map decisions that depend on the whole map are
taken once, before its frame tasks: the auto ROI (a task per map, on the same sampled frames as
offline) and the background rate (from the merged sums in `finalize`, as offline).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from opmon import interrupt
from opmon.errors import EmptyMapError, OpmonError, RawFileError
from opmon.processors.accumulate import Roi
from opmon.processors.eta_scans import add_states
from opmon.processors.offline import (EntryResult, MapPlan, ProcessOptions, RawPlan, accumulate_frames, new_accumulator,
                                      plan_map, write_results)
from opmon.streaming.archive.sources import Source, SourceMap, SourceOptions, open_source

if TYPE_CHECKING:
    from distributed import Client, Future

#: frames per task (rounded up to whole chunks): a few seconds of one core, so a 48-hour run
#: makes thousands of tasks that balance over the cluster, and a task's overhead (open the
#: file, read the angles, ship ~200 bytes of sums per map pixel back) stays a few percent.
TASK_FRAMES = 2048
LOCAL_PREFIX = "local:"
CONNECT_TIMEOUT_S = 10


@dataclass
class RangeSums:
    """What a task returns: a frame range's accumulator sums and the frames it skipped as corrupt."""

    state: dict[str, npt.NDArray[Any]]
    bad_frames: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class SourceSpec:
    """How a worker opens the plan's source itself (h5py handles do not cross processes): the
    files, the layout the client found, and the user's source options."""

    paths: tuple[str, ...]
    kind: str
    options: SourceOptions

    def open_map(self, name: str) -> tuple[Source, SourceMap]:
        source = open_source(list(self.paths), self.kind, self.options)
        found = next((m for m in source.maps if m.name == name), None)
        if found is None:
            source.close()
            raise RawFileError(f"{', '.join(self.paths)}: map {name!r} is not in the source any more")
        return source, found


# -- the one entry point into the per-map reduction --------------------------------------------
def reduce_frames(spec: SourceSpec, name: str, start: int, stop: int, options: ProcessOptions,
                  plan: Roi | MapPlan) -> RangeSums:
    """Reduce frames [start, stop) of map `name` of the source `spec` with `options` and the map's
    `plan` (ROI, mask with the pixels found bad, powder-arc spots; or a ROI alone) into accumulator sums
    (`MomentAccumulator.state()`).

    The same reading, corrupt-frame handling and accumulator as `offline.reduce_map`
    (`accumulate_frames` on a frame range of any source); runs in a Dask worker, which opens
    the source itself.
    """
    source, smap = spec.open_map(name)
    with source:
        try:
            plan = plan if isinstance(plan, MapPlan) else MapPlan(plan, None)
            acc = new_accumulator(smap, options, plan.roi, plan.mask, plan.spots)
            bad = accumulate_frames(smap, acc, options, start, stop, overlap=False)  # one core per worker thread
        except OSError as exc:
            raise _damaged(smap.label, exc) from exc
        return RangeSums({key: np.array(value) for key, value in acc.state().items()}, bad)


def _damaged(label: str, exc: OSError) -> RawFileError:
    """h5py's error for a damaged file as one line naming it (as `offline.process_plan` says it);
    raised in the task, so the client never mistakes it for a broken connection."""
    return RawFileError(f"{label}: damaged HDF5 file ({str(exc).split('(')[0].strip()})")


def decide_roi(spec: SourceSpec, name: str, options: ProcessOptions) -> Roi:
    """The ROI of one map, decided once before its frame tasks (the rule of offline's `choose_roi`)."""
    return decide_plan(spec, name, options).roi


def decide_plan(spec: SourceSpec, name: str, options: ProcessOptions) -> MapPlan:
    """The plan of one map (ROI, mask, powder-arc spots), decided once before its frame tasks
    (offline's `plan_map`, so both reduce a map alike)."""
    source, smap = spec.open_map(name)
    with source:
        try:
            return plan_map(smap, options)
        except OSError as exc:
            raise _damaged(smap.label, exc) from exc


def merge_sums(a: RangeSums, b: RangeSums) -> RangeSums:
    """Add two ranges' sums (the additive accumulator state) of the same map."""
    return RangeSums(add_states(a.state, b.state), sorted(a.bad_frames + b.bad_frames))


# -- splitting and merging ----------------------------------------------------------------------
def split_ranges(n_frames: int, chunk_frames: int, task_frames: int = TASK_FRAMES) -> list[tuple[int, int]]:
    """Frame ranges [a, b) covering 0..n_frames, each a whole number of HDF5 chunks (the last may end short)."""
    if n_frames < 1 or chunk_frames < 1 or task_frames < 1:
        raise OpmonError(f"cannot split {n_frames} frames in chunks of {chunk_frames} into tasks of {task_frames}")
    step = max(1, math.ceil(task_frames / chunk_frames)) * chunk_frames
    return [(a, min(a + step, n_frames)) for a in range(0, n_frames, step)]


def tree_merge(client: Client, parts: list[Future]) -> Future:
    """Merge futures of `RangeSums` pairwise, level by level, on the cluster (log2 depth)."""
    if not parts:
        raise OpmonError("nothing to merge")
    while len(parts) > 1:
        merged = [client.submit(merge_sums, a, b, pure=False) for a, b in zip(parts[::2], parts[1::2])]
        parts = merged + parts[len(merged) * 2:]
    return parts[0]


@dataclass
class EntryTasks:
    """One map's tasks on the cluster: its ROI, its frame ranges and their merged sums."""

    name: str
    smap: SourceMap
    plan: Future    # of its `MapPlan` (ROI, mask, powder-arc spots)
    ranges: dict[Future, tuple[int, int]]  # future -> its frames [a, b)
    total: Future

    @property
    def label(self) -> str:
        return self.smap.label


def submit_entry(client: Client, spec: SourceSpec, smap: SourceMap, options: ProcessOptions,
                 task_frames: int) -> EntryTasks:
    """Submit one map: its plan (ROI, mask, spots), then its chunk-aligned frame ranges and their tree merge."""
    chunks = smap.segments[0].data.chunks if smap.segments else None
    ranges = split_ranges(smap.n_frames, chunks[0] if chunks else 1, task_frames)
    plan = client.submit(decide_plan, spec, smap.name, options, pure=False)
    parts = {client.submit(reduce_frames, spec, smap.name, a, b, options, plan, pure=False): (a, b) for a, b in ranges}
    return EntryTasks(smap.name, smap, plan, parts, tree_merge(client, list(parts)))


def finalize_entry(tasks: EntryTasks, sums: RangeSums, plan: Roi | MapPlan, options: ProcessOptions) -> EntryResult:
    """The maps of one map from its merged sums, as `offline.reduce_map` finalizes them."""
    plan = plan if isinstance(plan, MapPlan) else MapPlan(plan, None)
    acc = new_accumulator(tasks.smap, options, plan.roi, plan.mask)
    acc.load_state(sums.state, add=False)
    try:
        return EntryResult(acc.finalize(), plan.roi, sums.bad_frames, plan.found_pixels(),
                           plan.spots.n_spots if plan.spots is not None else 0,
                           plan.spots.note if plan.spots is not None else "")
    except EmptyMapError as exc:
        raise EmptyMapError(f"{tasks.label}: {exc}") from exc


def process_plan_dask(plan: RawPlan, output: str | Path, options: ProcessOptions, client: Client,
                      progress: Callable[[int], None] | None = None, task_frames: int | None = None,
                      paths: list[str | Path] | None = None,
                      source_options: SourceOptions | None = None) -> dict[str, EntryResult]:
    """Reduce every map of a checked plan (any source) on the cluster of `client`, then write the
    maps file atomically. `paths` and `source_options`: how the plan was opened (default: its file).

    Raises
    ------
    OpmonError
        naming the map and frames when a worker died (Dask gave up on the task) or the
        scheduler went away; corrupt frames and damaged files raise as in one process.
        Nothing is written then.
    """
    from distributed import as_completed

    spec = SourceSpec(tuple(str(Path(p).absolute()) for p in (paths or [plan.path])), plan.kind,
                      source_options or SourceOptions())
    entries = [submit_entry(client, spec, smap, options, task_frames or TASK_FRAMES) for smap in plan.maps]
    where = {fut: (tasks, frames) for tasks in entries for fut, frames in tasks.ranges.items()}
    # On an error or Ctrl-C the tasks left are dropped when `connect` closes the client (the
    # scheduler forgets what no client wants); no explicit cancel, whose recursion into the merge
    # tasks trips an assertion in the scheduler of distributed 2026.8.0.
    with _dask_errors(client, where):
        for fut in as_completed(list(where)):
            interrupt.check()
            fut.result()  # raises the task's error (corrupt frame, damaged file, dead worker)
            if progress is not None:
                first, end = where[fut][1]
                progress(end - first)
        results = {tasks.name: finalize_entry(tasks, tasks.total.result(), tasks.plan.result(), options)
                   for tasks in entries}
    write_results(output, plan, results, options)
    return results


@contextmanager
def _dask_errors(client: Client, where: dict[Future, tuple[EntryTasks, tuple[int, int]]]) -> Iterator[None]:
    """Turn Dask's failures into one line naming what was lost; the task's own errors pass through."""
    from distributed import KilledWorker
    from distributed.client import FutureCancelledError

    try:
        yield
    except KilledWorker as exc:
        raise OpmonError(f"a Dask worker died while reducing {_what(exc.task, where)}: the task ran on "
                         f"{exc.allowed_failures + 1} worker(s) and each died; no maps were written") from exc
    except FutureCancelledError as exc:
        raise OpmonError(f"the Dask scheduler {client.scheduler.address} cancelled the work (scheduler gone or "
                         f"restarted?); no maps were written") from exc
    except OSError as exc:  # the connection to the scheduler broke
        raise OpmonError(f"lost the Dask scheduler {client.scheduler.address} ({exc}); no maps were written") from exc


def _what(key: Any, where: dict[Future, tuple[EntryTasks, tuple[int, int]]]) -> str:
    """The map and frames (or the step) a Dask key belongs to, for the message."""
    for fut, (tasks, (first, end)) in where.items():
        if fut.key == key:
            return f"{tasks.label} frames {first}-{end - 1}"
    for tasks, _ in where.values():
        if key == tasks.plan.key:
            return f"{tasks.label} (deciding its ROI and mask)"
        if key == tasks.total.key:
            return f"{tasks.label} (merging its sums)"
    return f"task {key} (merging sums)"


# -- clusters -----------------------------------------------------------------------------------
@contextmanager
def connect(spec: str) -> Iterator[Client]:
    """A client of the cluster `spec` names: ``local:N`` (N worker processes on this machine,
    one thread each, 127.0.0.1 only), a scheduler address (``tcp://host:8786``) or a scheduler
    file (JSON written by ``dask scheduler --scheduler-file`` or dask-jobqueue)."""
    from distributed import Client

    if spec.startswith(LOCAL_PREFIX):
        with local_cluster(_workers(spec)) as cluster, Client(cluster) as client:
            yield client
        return
    address = spec if "://" in spec else _address_in_scheduler_file(spec)
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise OpmonError(f"--dask {spec}: cannot reach the Dask scheduler ({exc})") from exc
    with client:
        yield client


def _address_in_scheduler_file(spec: str) -> str:
    """The scheduler's address from a scheduler file (``dask scheduler --scheduler-file``, dask-jobqueue)."""
    import json

    path = Path(spec)
    if not path.is_file():
        raise OpmonError(f"--dask {spec!r}: expected local:N, a scheduler address such as tcp://host:8786, "
                         f"or an existing scheduler file")
    try:
        address = json.loads(path.read_text())["address"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OpmonError(f"--dask {spec}: not a Dask scheduler file (JSON with the scheduler's \"address\"): {exc}") from exc
    if not isinstance(address, str) or "://" not in address:
        raise OpmonError(f"--dask {spec}: not a Dask scheduler file (address {address!r})")
    return address


def _workers(spec: str) -> int:
    text = spec[len(LOCAL_PREFIX):]
    if not text.isdigit() or int(text) < 1:
        raise OpmonError(f"--dask {spec!r}: local:N needs a worker count N >= 1")
    return int(text)


@contextmanager
def local_cluster(workers: int) -> Iterator[Any]:
    """`workers` Dask worker processes on 127.0.0.1, one thread and one numba thread each (Dask
    is the parallelism: numba's own threads would fight the other workers for the cores).

    No dashboard (its HTTP server listens on a random 127.0.0.1 port, never a fixed one another
    user may hold). Dask's own logging is silenced: a task's error reaches the user as opmon's
    one line (the worker would log it again with a traceback), a dead worker as `_dask_errors`' line.
    """
    import logging

    from distributed import LocalCluster

    log = logging.getLogger("distributed")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                               silence_logs=logging.CRITICAL, env={"NUMBA_NUM_THREADS": "1"})
        try:
            yield cluster
        finally:
            cluster.close(timeout=10)
    finally:
        log.setLevel(level)
