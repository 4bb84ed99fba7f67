"""`opmon demo`: the whole simulated operando experiment on one machine.

Archiver, live processor and (unless headless) dashboard run as supervised child processes;
the acquisition (RunEngine, simulated beamline, publishers, control server) runs here. At the
end the archive is read back for the summary, so what is printed is what was kept.
"""
from __future__ import annotations

import dataclasses
import logging
import socket
import sys
import threading
import time
import webbrowser
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
import zmq

from opmon.config import Config, load_config
from opmon.demo_signals import StopControl
from opmon.errors import ArchiveError, ConfigError, OpmonError, StreamStalledError
from opmon.experiment import AcquisitionService, ExperimentPlan
from opmon.onset_watch import parse_onset_action
from opmon.port_picker import free_ports, next_free, port_block, shift_to_free
from opmon.ports import BOUND_BY, PortInUseError, check_range, config_ports, in_use_message, require_free, taken
from opmon.streaming.archive.reader import RunArchive
from opmon.supervisor import Supervisor
from opmon.waiting import until

log = logging.getLogger(__name__)

DASHBOARD_PORT = 5006     # the dashboard's default; moved up when taken
DEFAULT_BASE = 5550       # --port-base N moves every port by N - 5550
STOP_TIMEOUT_S = 10.0     # from a stop signal to the summary, services stopped


class DemoStopped(OpmonError):
    """The demo was stopped before its run began: nothing to summarise."""


def write_config(config: Config, path: Path) -> Path:
    """The effective configuration as TOML, so every child process sees the same ports and paths.

    Written by tomli-w, which escapes what a path may hold (quotes, backslashes); the steering
    token is left out: a secret travels in the environment, never in a file.
    """
    values = dataclasses.asdict(config)
    values["control"].pop("token")
    path.write_text(tomli_w.dumps(values))
    return path


def shift_ports(config: Config, base: int) -> None:
    """Move every port to base + its offset from 5550, for parallel runs and tests."""
    for f in dataclasses.fields(config.ports):
        setattr(config.ports, f.name, base + getattr(config.ports, f.name) - DEFAULT_BASE)


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
    archive = RunArchive.at(run_dir)
    maps: list[MapSummary] = []
    sequences: list[np.ndarray] = []
    sent: list[tuple[int, int] | None] = []
    for number in archive.map_numbers():
        info = archive.map_info(number)
        sequences.append(info.seqs)
        sent.append(info.sent)
        d_mean = d_std = None
        valid = 0
        d = archive.d_spacing(number)
        if d is not None:
            d = d[np.isfinite(d)]
            valid = int(d.size)
            if d.size:
                d_mean, d_std = float(d.mean()), float(d.std())
        maps.append(MapSummary(number, int(info.seqs.size), info.complete, d_mean, d_std, valid, info.trigger))
    for m, seq, (lo, hi) in zip(maps, sequences, _map_seq_bounds(sent, sequences, frames_sent)):
        m.missing = seq_ranges(np.setdiff1d(np.arange(lo, hi + 1), seq))
    seq_all = np.sort(np.concatenate(sequences)) if sequences else np.zeros(0, dtype=np.int64)
    expected = np.arange(frames_sent)
    lost = int(np.setdiff1d(expected, seq_all).size)
    return RunSummary(run_dir, maps, frames_sent, int(seq_all.size), lost, exit_status)


def wait_for_frames(run_dir: Path, frames_sent: int, deadline: float) -> bool:
    """After a stop: wait (until `deadline`, monotonic) until the archive holds every frame sent
    and the run's end, so what was in flight is on disk before the archiver is stopped."""
    archive = RunArchive.at(run_dir)

    def all_held() -> bool:
        held = archive.frames_held()
        return held is not None and held >= frames_sent and archive.closed()

    return until(all_held, deadline - time.monotonic(), interval_s=0.1)


def wait_for_archive(run_dir: Path, n_maps: int, timeout_s: float, supervisor: Supervisor | None = None,
                     cancel: threading.Event | None = None) -> bool:
    """Wait until every map of the run is complete with its final maps file (or `cancel` is set)."""
    archive = RunArchive.at(run_dir)

    def all_done() -> bool:
        if supervisor is not None:
            supervisor.check()
        closed = archive.closed()
        done = 0
        while done < n_maps and archive.map_done(done, run_closed=closed):
            done += 1
        return done == n_maps

    return until(all_done, timeout_s, interval_s=0.25, cancel=cancel)


def wait_for_port(host: str, port: int, timeout_s: float, cancel: threading.Event | None = None) -> bool:
    """True once a TCP server accepts connections on host:port (the dashboard is up)."""
    def accepts() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False

    return until(accepts, timeout_s, interval_s=0.2, cancel=cancel)


def _span(ports: dict[str, int]) -> str:
    lo, hi = min(ports.values()), max(ports.values())
    return f"{lo}-{hi}" if lo != hi else str(lo)


def settle_ports(config: Config, *, explicit: bool, headless: bool, dashboard_port: int | None) -> int | None:
    """Check every port before anything starts; returns the dashboard port (None if headless).

    Ports outside 1..65535 are refused. Ports the user chose (`explicit`: --port-base, a config
    file, --dashboard-port) must be free: one line naming the taken port and its holder. The
    defaults move to the first free set, and the new ports are printed.
    """
    ports = config_ports(config)
    check_range(ports)
    if dashboard_port:                    # 0: any free port
        check_range({"dashboard": dashboard_port})
    host = config.host
    if explicit:
        require_free(host, ports)
    else:
        busy = taken(host, ports)
        if busy:
            name, port = next(iter(busy.items()))
            moved = shift_to_free(host, ports)
            for key, value in moved.items():
                setattr(config.ports, key, value)
            print(f"ports {_span(ports)} are taken ({in_use_message(host, name, port)}); using ports {_span(moved)}",
                  flush=True)
    if headless:
        return None
    if dashboard_port == 0:
        return next_free(host, free_ports(1)[0])
    if dashboard_port is not None:
        require_free(host, {"dashboard": dashboard_port})
        return dashboard_port
    chosen = next_free(host, DASHBOARD_PORT)
    if chosen != DASHBOARD_PORT:
        print(f"dashboard port {DASHBOARD_PORT} is taken ({in_use_message(host, 'dashboard', DASHBOARD_PORT)}); "
              f"using {chosen}", flush=True)
    return chosen


def _open_acquisition(config: Config, plan: ExperimentPlan) -> AcquisitionService:
    """The acquisition binds its ports; a port taken since `settle_ports` looked gets one line too."""
    try:
        return AcquisitionService(config, plan)
    except zmq.ZMQError as exc:
        busy = taken(config.host, config_ports(config, BOUND_BY["acquisition"]))
        if busy:
            name, port = next(iter(busy.items()))
            raise PortInUseError(in_use_message(config.host, name, port)) from None
        raise ConfigError(f"acquisition cannot bind its ports on {config.host}: {exc}") from None


def _stop_services(supervisor: Supervisor, deadline: float) -> None:
    """Live processor and dashboard first (a final map still travels to the archiver), then the
    archiver, which flushes and closes its files on SIGTERM; SIGKILL for whatever overstays."""
    first = max(0.5, (deadline - time.monotonic()) * 0.6)
    supervisor.stop(["live", "dashboard"], first)
    supervisor.stop_all(max(0.5, deadline - time.monotonic()))


def _start_services(supervisor: Supervisor, config: Config, config_path: Path, workers: int,
                    dashboard_port: int | None, token: str) -> None:
    """Archiver, live processor and (unless headless) dashboard, then the supervisor's watch."""
    supervisor.start("archiver", ["archive", "--config", str(config_path)])
    supervisor.start("live", ["live", "--config", str(config_path), "--roi", "full", "--workers", str(workers)])
    if dashboard_port is not None:
        # the token travels in the environment: not visible in `ps`, and safe when it starts with "-"
        supervisor.start("dashboard", ["dashboard", "--config", str(config_path), "--port", str(dashboard_port)],
                         env={"OPMON_CONTROL_TOKEN": token})
    supervisor.watch()


def wait_for_live(endpoint: str, timeout_s: float, cancel: threading.Event) -> bool:
    """True once the live processor publishes its status: its kernels are loaded (or compiled,
    20-60 s on a first start without numba's cache) and it takes frames. Frames sent earlier
    would wait in the stream and stall the acquisition."""
    from opmon.streaming.protocol import unpack
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"status")
    sock.connect(endpoint)
    try:
        deadline = time.monotonic() + timeout_s
        while not cancel.is_set() and time.monotonic() < deadline:
            if not sock.poll(200):
                continue
            parts = sock.recv_multipart()
            try:
                status = unpack(parts[1]) if len(parts) == 2 else None
            except Exception:           # a garbled status is skipped
                continue
            if isinstance(status, dict) and status.get("source") == "live":
                return True
        return False
    finally:
        sock.close(0)


def _announce_dashboard(host: str, port: int, token: str, supervisor: Supervisor, cancel: threading.Event,
                        open_browser: bool) -> None:
    """Print the dashboard's URLs once it listens (and open a browser if asked)."""
    url = f"http://{host}:{port}/"
    if not wait_for_port(host, port, 60.0, cancel=cancel) and not cancel.is_set():
        log.warning("dashboard not listening on %s:%d after 60 s; see %s", host, port, supervisor.log_dir / "dashboard.log")
    print(f"dashboard (read-only): {url}\ndashboard (steering):  {url}?token={token}", flush=True)
    if open_browser and not cancel.is_set():
        threading.Timer(3.0, lambda: webbrowser.open(f"{url}?token={token}")).start()


#: how long the demo waits for the live processor's first status (kernels compiled on a first start)
LIVE_READY_S = 300.0


def run_demo(config: Config, plan: ExperimentPlan, *, headless: bool, workers: int = 1,
             dashboard_port: int | None = None, open_browser: bool = True, finish_timeout_s: float = 120.0,
             ports_explicit: bool = True, stop_timeout_s: float = STOP_TIMEOUT_S) -> RunSummary:
    """Run the experiment with its services; Ctrl-C pauses then stops, SIGTERM stops (demo_signals.py).

    A stop aborts the run through the RunEngine, waits for the frames in flight to reach the
    archive, stops every service, and returns the summary read back from the archive, all
    within `stop_timeout_s` of the signal.
    """
    dashboard_port = settle_ports(config, explicit=ports_explicit, headless=headless, dashboard_port=dashboard_port)
    archive = Path(config.archive.dir).resolve()
    try:
        archive.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"archive directory {archive}: {exc.strerror}") from None
    config.archive.dir = str(archive)
    config_path = write_config(config, archive / "opmon-demo.toml")
    service = _open_acquisition(config, plan)
    hint = "resume from the dashboard" if not headless else f"resume from `opmon dashboard --config {config_path}`"
    control = StopControl(service.steering, resume_hint=hint).install()
    supervisor = Supervisor(archive / "logs", on_down=lambda name, why: control.request_stop(why))
    status = "abort"
    run_dir: Path | None = None
    frames_sent = 0
    try:
        _start_services(supervisor, config, config_path, workers, dashboard_port, service.token)
        if not wait_for_live(config.endpoint("display_live"), LIVE_READY_S, control.stop_requested) \
                and not control.stop_requested.is_set():
            log.warning("live processor not ready after %.0f s (see %s); starting the acquisition anyway",
                        LIVE_READY_S, supervisor.log_dir / "live.log")
        if dashboard_port is not None:
            _announce_dashboard(config.host, dashboard_port, service.token, supervisor, control.stop_requested,
                                open_browser)
        print(f"control token: {service.token}\narchive: {archive}\n"
              f"ports: {_span(config_ports(config))} on {config.host}", flush=True)
        if not control.stop_requested.is_set():
            control.running()
            try:
                status = service.run()
            except StreamStalledError as exc:   # a receiver gone for good: say so, then summarise
                print(f"opmon demo: {exc}", file=sys.stderr, flush=True)
                status = "fail"
        control.finished()
        stopping = control.stop_requested.is_set()
        run_uid = service.documents.runs[-1] if service.documents.runs else None
        frames_sent = service.publisher.seq
        n_maps = service.publisher.n_maps
        try:
            service.close(linger_s=stop_timeout_s / 3 if stopping or status == "fail" else None)   # sent frames leave first
        except StreamStalledError as exc:
            log.warning("closing the acquisition stream: %s", exc)
        if run_uid is None:
            if stopping:
                raise DemoStopped(f"stopped before the run started ({control.stop_reason}); nothing was archived")
            raise ArchiveError("the acquisition opened no run; nothing was archived")
        run_dir = archive / run_uid
        if stopping:
            deadline = control.stop_time + stop_timeout_s * 0.6
            if not wait_for_frames(run_dir, frames_sent, deadline):
                log.warning("run %s: the archive does not hold every frame sent yet; stopping anyway", run_uid)
        else:
            if not wait_for_archive(run_dir, n_maps, finish_timeout_s, cancel=control.quit):
                if not control.quit.is_set():
                    log.warning("archive of run %s not complete after %.0f s", run_uid, finish_timeout_s)
            if dashboard_port is not None and not control.quit.is_set():
                print("run finished; the dashboard stays up until Ctrl-C", flush=True)
                while not control.end_requested.wait(0.5):
                    pass
    finally:
        control.finished()
        try:
            service.close(linger_s=stop_timeout_s / 3)
        except StreamStalledError as exc:
            log.warning("closing the acquisition stream: %s", exc)
        if control.quit.is_set():
            # within the stop's budget, but never less than a moment to flush when already late
            _stop_services(supervisor, max(control.stop_time + stop_timeout_s * 0.9, time.monotonic() + 2.0))
        else:
            supervisor.stop_all()
        control.restore()
    summary = summarize(run_dir, frames_sent, status)
    if control.stop_reason:
        print(f"opmon demo: stopped ({control.stop_reason}) in {time.monotonic() - control.stop_time:.1f} s",
              file=sys.stderr, flush=True)
    return summary


def _positive(value: float, option: str) -> float:
    if not (np.isfinite(value) and value > 0):
        raise ConfigError(f"{option} {value}: must be a positive number of µm")
    return float(value)


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
    if args.fly and args.order == "point-outer":
        raise ConfigError("--fly flies one map row at one angle at a time: it needs --order eta-outer")
    if not args.point_time > 0:
        raise ConfigError(f"--point-time {args.point_time}: must be > 0 s")
    plan.fly, plan.point_time_s = args.fly, args.point_time
    plan.on_onset = getattr(args, "on_onset", "none")
    plan.phase_tracking = getattr(args, "phase_tracking", "off")
    parse_onset_action(plan.on_onset)           # a bad action is a one-line error before anything starts
    dose_limit = getattr(args, "dose_limit", None)
    if dose_limit is not None and not dose_limit > 0:
        raise ConfigError(f"--dose-limit {dose_limit}: must be a positive number of photons")
    plan.dose_limit = dose_limit
    plan.dose_action = getattr(args, "dose_action", "pause")
    plan.map_step_um = _positive(getattr(args, "map_step_um", plan.map_step_um), "--map-step-um")
    plan.stage_drift_um = getattr(args, "stage_drift_um", 0.0)
    if not plan.stage_drift_um >= 0:
        raise ConfigError(f"--stage-drift-um {plan.stage_drift_um}: must be >= 0 µm")
    plan.recentre = getattr(args, "recentre", "off")
    plan.recentre_max_step_um = _positive(getattr(args, "recentre_max_step_um", plan.recentre_max_step_um),
                                          "--recentre-max-step-um")
    plan.order = args.order or ("eta-outer" if args.fly else "point-outer")
    return plan


def configure(args: Any) -> Config:
    config = load_config(args.config)
    if args.archive_dir:
        config.archive.dir = args.archive_dir
    if args.port_base == "auto":     # the shared picker; settle_ports still checks them
        shift_ports(config, port_block(max(config_ports(config).values()) - DEFAULT_BASE + 1))
    elif args.port_base:
        shift_ports(config, args.port_base)
        ports = config_ports(config)
        if not all(1 <= port <= 65535 for port in ports.values()):
            raise ConfigError(f"--port-base {args.port_base} puts the ports at {_span(ports)}, outside 1..65535")
    return config
