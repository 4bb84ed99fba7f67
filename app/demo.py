"""`opmon demo`: the whole simulated operando experiment on one machine.

Archiver, live processor and (unless headless) dashboard run as supervised child processes;
the acquisition (RunEngine, simulated beamline, publishers, control server) runs here. At the
end the archive is read back for the summary, so what is printed is what was kept.
"""
from __future__ import annotations

import dataclasses
import logging
import signal
import socket
import threading
import time
import webbrowser
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from opmon.config import Config, load_config
from opmon.errors import ArchiveError, OpmonError
from opmon.experiment import AcquisitionService, ExperimentPlan
from opmon.supervisor import Supervisor

log = logging.getLogger(__name__)


def write_config(config: Config, path: Path) -> Path:
    """The effective configuration as TOML, so every child process sees the same ports and paths."""
    lines = [f'host = "{config.host}"']
    for section in ("ports", "stream", "archive", "live", "control"):
        lines.append(f"\n[{section}]")
        for f in dataclasses.fields(getattr(config, section)):
            if (section, f.name) == ("control", "token"):
                continue        # a secret: it travels in the environment, never in a file
            value = getattr(getattr(config, section), f.name)
            lines.append(f"{f.name} = " + (f'"{value}"' if isinstance(value, str) else repr(value).lower()
                                           if isinstance(value, bool) else repr(value)))
    path.write_text("\n".join(lines) + "\n")
    return path


def shift_ports(config: Config, base: int) -> None:
    """Move every port to base + its offset from 5550, for parallel runs and tests."""
    for f in dataclasses.fields(config.ports):
        setattr(config.ports, f.name, base + getattr(config.ports, f.name) - 5550)


@dataclass
class MapSummary:
    number: int
    frames: int
    complete: bool
    d_mean: float | None
    d_std: float | None
    valid_pixels: int
    trigger: str
    missing: list[tuple[int, int]] = dataclasses.field(default_factory=list)   # (first, last) seq ranges


@dataclass
class RunSummary:
    run_dir: Path
    maps: list[MapSummary]
    frames_sent: int
    frames_archived: int
    frames_lost: int
    exit_status: str

    @property
    def ok(self) -> bool:
        """The run succeeded and the archive holds every frame of it (every map complete)."""
        return self.exit_status == "success" and self.frames_lost == 0 and all(m.complete for m in self.maps)

    def text(self) -> str:
        lines = [f"run directory: {self.run_dir}", f"exit status: {self.exit_status}",
                 f"maps: {len(self.maps)}  frames sent: {self.frames_sent}  frames archived: {self.frames_archived}  "
                 f"frames lost: {self.frames_lost}"]
        incomplete = [m.number for m in self.maps if not m.complete]
        if self.frames_lost or incomplete:
            lines.append(f"ARCHIVE INCOMPLETE: {self.frames_lost} frame(s) lost"
                         + (f", map(s) {', '.join(map(str, incomplete))} not complete" if incomplete else "")
                         + " (missing seqs below); the demo exits with a failure status")
        for m in self.maps:
            d = "no maps yet" if m.d_mean is None else f"mean d = {m.d_mean:.5f} Å (std {m.d_std:.1e}, {m.valid_pixels} px)"
            trigger = f"  [{m.trigger}]" if m.trigger and m.trigger != "{}" else ""
            lines.append(f"  map {m.number}: {m.frames} frames, {'complete' if m.complete else 'INCOMPLETE'}, {d}{trigger}")
            if m.missing:
                n = sum(hi - lo + 1 for lo, hi in m.missing)
                lines.append(f"    missing {n} frame(s), seq {format_ranges(m.missing)}")
        return "\n".join(lines)


def seq_ranges(seqs: np.ndarray) -> list[tuple[int, int]]:
    """Sorted unique sequence numbers as (first, last) runs of consecutive values."""
    if seqs.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(seqs) != 1)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [seqs.size - 1]])
    return [(int(seqs[i]), int(seqs[j])) for i, j in zip(starts, ends)]


def format_ranges(ranges: list[tuple[int, int]], limit: int = 12) -> str:
    text = ", ".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in ranges[:limit])
    return text + (f", ... ({len(ranges) - limit} more ranges)" if len(ranges) > limit else "")


def _scalar(f: h5py.File, key: str, default: int) -> int:
    return int(f[key][()]) if key in f else default


def _map_seq_bounds(sent: list[tuple[int, int] | None], seqs: list[np.ndarray], frames_sent: int) -> list[tuple[int, int]]:
    """(first, last) seq each map was sent with: from its archived map_end, else between its neighbours."""
    bounds: list[tuple[int, int]] = []
    for i, known in enumerate(sent):
        if known is not None:
            bounds.append(known)
            continue
        lo = bounds[-1][1] + 1 if bounds else 0
        nxt = next((s for s in sent[i + 1:] if s is not None), None)
        if nxt is not None:
            hi = nxt[0] - 1
        elif i == len(sent) - 1:
            hi = frames_sent - 1
        else:
            hi = int(seqs[i].max()) if seqs[i].size else lo - 1
        bounds.append((lo, hi))
    return bounds


def summarize(run_dir: Path, frames_sent: int, exit_status: str) -> RunSummary:
    """Read the archive of one run back: frames per map, the seqs each map is missing, final maps."""
    maps: list[MapSummary] = []
    sequences: list[np.ndarray] = []
    sent: list[tuple[int, int] | None] = []
    for raw in sorted(run_dir.glob("map_[0-9][0-9][0-9][0-9].h5")):
        number = int(raw.stem.split("_")[1])
        with h5py.File(raw, "r", swmr=True) as f:
            seq = np.unique(f["entry/scan/sequence"][()])
            complete = bool(f["entry/scan/complete"][()]) if "entry/scan/complete" in f else False
            trigger = str(f["entry"].attrs.get("trigger", ""))
            n_sent, last = _scalar(f, "entry/scan/n_frames_sent", -1), _scalar(f, "entry/scan/last_seq_sent", -1)
        sequences.append(seq)
        sent.append((last - n_sent + 1, last) if n_sent >= 0 else None)
        d_mean = d_std = None
        valid = 0
        maps_file = run_dir / f"{raw.stem}_maps.h5"
        if maps_file.exists():
            with h5py.File(maps_file, "r") as f:
                if "entry/maps/d_spacing" in f:
                    d = f["entry/maps/d_spacing"][()]
                    d = d[np.isfinite(d)]
                    valid = int(d.size)
                    if d.size:
                        d_mean, d_std = float(d.mean()), float(d.std())
        maps.append(MapSummary(number, int(seq.size), complete, d_mean, d_std, valid, trigger))
    for m, seq, (lo, hi) in zip(maps, sequences, _map_seq_bounds(sent, sequences, frames_sent)):
        m.missing = seq_ranges(np.setdiff1d(np.arange(lo, hi + 1), seq))
    seq_all = np.sort(np.concatenate(sequences)) if sequences else np.zeros(0, dtype=np.int64)
    expected = np.arange(frames_sent)
    lost = int(np.setdiff1d(expected, seq_all).size)
    return RunSummary(run_dir, maps, frames_sent, int(seq_all.size), lost, exit_status)


def _run_state(run_dir: Path) -> str | None:
    try:
        with h5py.File(run_dir / "run.h5", "r") as f:
            return str(f.attrs.get("state", ""))
    except (OSError, KeyError):
        return None


def wait_for_archive(run_dir: Path, n_maps: int, timeout_s: float, supervisor: Supervisor) -> bool:
    """Wait until every map of the run has its final maps file and is complete, or the run is
    closed in the archive (then a map still incomplete stays so: frames were really lost)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        supervisor.check()
        done = 0
        closed = _run_state(run_dir) == "done"
        for number in range(n_maps):
            raw, maps = run_dir / f"map_{number:04d}.h5", run_dir / f"map_{number:04d}_maps.h5"
            if not (raw.exists() and maps.exists()):
                break
            try:
                with h5py.File(raw, "r", swmr=True) as f:
                    if not (closed or f["entry/scan/complete"][()]):
                        break
            except (OSError, KeyError):
                break
            done += 1
        if done == n_maps:
            return True
        time.sleep(0.25)
    return False


def wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    """True once a TCP server accepts connections on host:port (the dashboard is up)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def run_demo(config: Config, plan: ExperimentPlan, *, headless: bool, workers: int = 1, dashboard_port: int = 5006,
             open_browser: bool = True, finish_timeout_s: float = 120.0) -> RunSummary:
    archive = Path(config.archive.dir).resolve()
    archive.mkdir(parents=True, exist_ok=True)
    config.archive.dir = str(archive)
    service = AcquisitionService(config, plan)
    config_path = write_config(config, archive / "opmon-demo.toml")
    supervisor = Supervisor(archive / "logs")
    supervisor.start("archiver", ["archive", "--config", str(config_path)])
    supervisor.start("live", ["live", "--config", str(config_path), "--roi", "full", "--workers", str(workers)])
    if not headless:
        # the token travels in the environment: not visible in `ps`, and safe when it starts with "-"
        supervisor.start("dashboard", ["dashboard", "--config", str(config_path), "--port", str(dashboard_port)],
                         env={"OPMON_CONTROL_TOKEN": service.token})
        url = f"http://{config.host}:{dashboard_port}/"
        if not wait_for_port(config.host, dashboard_port, 60.0):
            log.warning("dashboard not listening on %s:%d after 60 s; see %s", config.host, dashboard_port,
                        supervisor.log_dir / "dashboard.log")
        print(f"dashboard (read-only): {url}\ndashboard (steering):  {url}?token={service.token}", flush=True)
        if open_browser:
            threading.Timer(3.0, lambda: webbrowser.open(f"{url}?token={service.token}")).start()
    print(f"control token: {service.token}\narchive: {archive}", flush=True)
    watchdog_stop = threading.Event()

    def watchdog() -> None:
        while not watchdog_stop.wait(0.5):
            supervisor.check()

    threading.Thread(target=watchdog, name="opmon-supervisor", daemon=True).start()
    running = True

    def terminate(signum: int, frame: Any) -> None:
        """SIGTERM: abort the run through the RunEngine (cell left safe), then clean up."""
        if running:
            try:
                service.steering.abort(f"signal {signum}")
            except OpmonError:
                pass  # not running or paused: nothing to abort
        else:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        status = service.run()
        running = False
        run_uid = service.documents.runs[-1] if service.documents.runs else None
        frames_sent = service.publisher.seq
        n_maps = service.publisher.n_maps
        service.close()
        if run_uid is None:
            raise ArchiveError("the acquisition opened no run; nothing was archived")
        run_dir = archive / run_uid
        watchdog_stop.set()
        if not wait_for_archive(run_dir, n_maps, finish_timeout_s, supervisor):
            log.warning("archive of run %s not complete after %.0f s", run_uid, finish_timeout_s)
        if not headless:
            print("run finished; the dashboard stays up until Ctrl-C", flush=True)
            try:
                while True:
                    time.sleep(1.0)
                    supervisor.check()
            except KeyboardInterrupt:
                pass
        return summarize(run_dir, frames_sent, status)
    finally:
        signal.signal(signal.SIGTERM, previous)
        watchdog_stop.set()
        service.close()
        supervisor.stop_all()


def plan_from_args(args: Any) -> ExperimentPlan:
    plan = ExperimentPlan()
    if args.maps_at:
        plan.thresholds_v = list(args.maps_at)
    plan.period_s = args.period
    plan.plateau = args.plateau
    plan.map_shape = (args.map_shape[0], args.map_shape[1])
    plan.n_angles = args.angles
    plan.acceleration = args.acceleration
    plan.max_maps = args.max_maps
    plan.seed = args.seed
    plan.order = args.order
    return plan


def configure(args: Any) -> Config:
    config = load_config(args.config)
    if args.archive_dir:
        config.archive.dir = args.archive_dir
    if args.port_base:
        shift_ports(config, args.port_base)
    return config
