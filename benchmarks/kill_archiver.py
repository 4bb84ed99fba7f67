"""kill -9 of the archiver at a random moment of `opmon demo --headless`, N times: frames lost.

Each trial runs a small headless demo (own ports, own archive directory), waits for the first
archived frame, sleeps a random time (uniform over `--spread` seconds, so kills land inside
maps and between them), finds the demo's `opmon archive` child in /proc and SIGKILLs it; the
supervisor restarts it. Printed per trial: when it was killed, frames lost (from the demo's
summary, read back from the archive), maps complete, exit status, messages re-sent, when the
supervisor restarted it (kill -> "exited with -9; restart", from the demo's log) and the time
to recover (kill -> the restarted archiver synced with the sender, from its log).
Figures, not a timed test:

    python benchmarks/kill_archiver.py --trials 20 --port-base 22200 --dir /tmp/kill-archiver
"""
from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from opmon.streaming.archive.layout import map_file_name
from opmon.streaming.archive.reader import RunArchive

from opmon.waiting import until

DEMO = ["--headless", "--map-shape", "8", "8", "--acceleration", "1500", "--maps-at", "4.5", "4.7", "4.75"]
SYNC = re.compile(r"^(\S+ \S+) opmon\.streaming\.archiver INFO: sender synced \(epoch (\d+)\): (\d+) message")
RESTART = re.compile(r"^(\S+ \S+) \S+ WARNING: archiver exited with -9; restart", re.M)


def archiver_pid(demo_pid: int) -> int | None:
    """The `opmon archive` child of the demo process (its command line and parent, from /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == demo_pid and b"opmon.cli" in argv and b"archive" in argv:
            return int(entry.name)
    return None


def _first_frame_stored(archive: Path) -> bool:
    for path in archive.glob(f"*/{map_file_name(0)}"):
        try:
            return RunArchive.at(path.parent).map_info(0).frames > 0
        except (OSError, KeyError):
            return False
    return False


def trial(n: int, root: Path, port_base: int, spread_s: float) -> dict[str, object]:
    archive = root / f"trial{n:02d}"
    shutil.rmtree(archive, ignore_errors=True)
    cmd = [sys.executable, "-m", "opmon.cli", "demo", *DEMO, "--archive-dir", str(archive), "--port-base", str(port_base)]
    demo = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed_at = t_kill = None
    try:
        until(lambda: _first_frame_stored(archive) or demo.poll() is not None, 180)
        t_first = time.monotonic()
        time.sleep(random.uniform(0.0, spread_s))
        pid = archiver_pid(demo.pid)
        if pid is not None and demo.poll() is None:
            t_kill = time.time()
            os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic() - t_first
        out, _ = demo.communicate(timeout=300)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    lost = re.search(r"frames lost: (\d+)", out)
    maps = re.search(r"maps: (\d+)", out)
    recover = resent = restart = None
    m = RESTART.search(out)
    if t_kill is not None and m:
        restart = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() - t_kill
    log = archive / "logs" / "archiver.log"
    if t_kill is not None and log.exists():
        for line in log.read_text().splitlines():
            m = SYNC.match(line)
            if m and int(m.group(2)) >= 2:
                t_sync = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                if t_sync >= t_kill - 0.01:
                    recover, resent = t_sync - t_kill, int(m.group(3))
                    break
    return {"trial": n, "killed_at_s": killed_at, "lost": int(lost.group(1)) if lost else None,
            "maps": int(maps.group(1)) if maps else None, "complete": out.count(", complete,"),
            "exit": demo.returncode, "recover_s": recover, "resent": resent, "restart_s": restart,
            "unacked_syncs": out.count("never acknowledged its sync"), "tail": out[-1500:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--port-base", type=int, default=22200, help="ports of the demos (9 from here)")
    parser.add_argument("--dir", default="/tmp/kill-archiver", help="archive directories of the trials")
    parser.add_argument("--spread", type=float, default=25.0, help="kill within this many s of the first frame")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep each trial's archive")
    args = parser.parse_args(argv)
    if not 1 <= args.port_base <= 65535 - 10:
        parser.error(f"--port-base {args.port_base}: ports must stay within 1..65535")
    random.seed(args.seed)
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    print(f"kill -9 of the archiver during `opmon demo {' '.join(DEMO)}`, {args.trials} trials, "
          f"at a random moment within {args.spread:.0f} s of the first archived frame ({os.cpu_count()} cores)")
    print(f"{'trial':>5} {'kill at':>8} {'lost':>5} {'maps':>5} {'complete':>8} {'exit':>4} {'re-sent':>7} "
          f"{'restart':>8} {'recover':>8}")
    results = []
    for n in range(args.trials):
        r = trial(n, root, args.port_base, args.spread)
        results.append(r)
        at = "-" if r["killed_at_s"] is None else f"{r['killed_at_s']:.2f}s"
        rec = "-" if r["recover_s"] is None else f"{r['recover_s']:.2f}s"
        restart = "-" if r["restart_s"] is None else f"{r['restart_s']:.2f}s"
        print(f"{n:>5} {at:>8} {r['lost']!s:>5} {r['maps']!s:>5} {r['complete']:>8} {r['exit']:>4} {r['resent']!s:>7} "
              f"{restart:>8} {rec:>8}" + (f"  ({r['unacked_syncs']} sync(s) never acknowledged)" if r["unacked_syncs"] else ""),
              flush=True)
        if r["exit"] != 0 or r["lost"] != 0:
            print(r["tail"])
        if not args.keep:
            shutil.rmtree(root / f"trial{n:02d}", ignore_errors=True)
    recovers = [r["recover_s"] for r in results if r["recover_s"] is not None]
    lost = [r["lost"] for r in results if r["lost"] is not None]
    print(f"frames lost: total {sum(lost)}, per trial max {max(lost) if lost else '-'}; "
          f"trials with exit 0 and every map complete: "
          f"{sum(r['exit'] == 0 and r['complete'] == r['maps'] for r in results)}/{len(results)}")
    if recovers:
        print(f"time to recover (kill -> restarted archiver synced): median {statistics.median(recovers):.2f} s, "
              f"max {max(recovers):.2f} s over {len(recovers)} trials")
    return 0 if all(r["exit"] == 0 and r["lost"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
