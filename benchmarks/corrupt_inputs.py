"""Corrupt inputs to `opmon process` and `opmon replay`: what each kind of damage gives.

For the reliability table of issue 11: a small simulated map is damaged in one way per trial
(truncated file, random bytes flipped inside compressed chunks, wrong frame dtype, a missing
metadata dataset) and both commands run on it in a subprocess. Each outcome is classified:
`error` (one line on stderr, non-zero exit, no traceback), `skipped` (--skip-bad-frames: maps
written, bad frames listed, exit 3), `undetected` (exit 0: the damage decoded to other valid
counts; bitshuffle/LZ4 chunks carry no checksum), `traceback` or `crash` (killed by a signal).
The last two must stay at 0; no temporary file may be left behind.

    python benchmarks/corrupt_inputs.py --trials 20
"""
from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

OPMON = str(Path(sys.executable).with_name("opmon"))
DATA = "entry/instrument/detector/data"


def classify(result: subprocess.CompletedProcess[str]) -> str:
    if result.returncode < 0:
        return "crash"
    if "Traceback" in result.stderr:
        return "traceback"
    if result.returncode == 0:
        return "undetected"
    if result.returncode == 3:
        return "skipped"
    return "error" if len(result.stderr.strip().splitlines()) == 1 else "error (several lines)"


def damage(kind: str, src: Path, dst: Path, rng: np.random.Generator) -> None:
    shutil.copy(src, dst)
    if kind == "truncated":
        data = src.read_bytes()
        dst.write_bytes(data[: int(len(data) * rng.uniform(0.05, 0.98))])
    elif kind == "flipped bytes in chunks":
        with h5py.File(dst, "r") as f:
            ds = f[DATA]
            infos = [ds.id.get_chunk_info_by_coord((int(i), 0, 0)) for i in rng.choice(ds.shape[0], 3, replace=False)]
        with open(dst, "r+b") as fh:
            for info in infos:
                for _ in range(int(rng.integers(1, 4))):
                    fh.seek(info.byte_offset + int(rng.integers(0, info.size)))
                    fh.write(bytes([int(rng.integers(0, 256))]))
    elif kind == "wrong dtype":
        with h5py.File(dst, "a") as f:
            shape = f[DATA].shape
            del f[DATA]
            f.create_dataset(DATA, shape=shape, dtype=np.float32, chunks=(1,) + shape[1:])
    elif kind == "missing attributes":
        with h5py.File(dst, "a") as f:
            victim = ["entry/instrument/detector/distance", "entry/instrument/beam/incident_energy",
                      "entry/scan/map_index", "entry/sample/positioners/eta"][int(rng.integers(0, 4))]
            del f[victim]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20, help="damaged files per kind")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    kinds = ["truncated", "flipped bytes in chunks", "wrong dtype", "missing attributes"]
    table: dict[tuple[str, str], collections.Counter[str]] = collections.defaultdict(collections.Counter)
    leftovers = 0
    worst: list[str] = []  # stderr of any traceback or crash, to show
    with tempfile.TemporaryDirectory() as tmp:
        wd = Path(tmp)
        raw = wd / "raw.h5"
        subprocess.run([OPMON, "simulate", "-o", str(raw), "--ny", "6", "--nx", "6", "--angles", "8", "-q",
                        "--roi", "156", "356", "156", "356"], check=True, capture_output=True)
        for kind in kinds:
            for _ in range(args.trials):
                bad = wd / "bad.h5"
                damage(kind, raw, bad, rng)
                for command in (["process", "bad.h5", "-o", "maps.h5", "-q", "--force"],
                                ["process", "bad.h5", "-o", "maps.h5", "-q", "--force", "--skip-bad-frames"],
                                ["replay", "bad.h5", "-o", "maps.h5", "--force"]):
                    result = subprocess.run([OPMON, *command], cwd=wd, capture_output=True, text=True, timeout=300)
                    label = " ".join(c for c in command[:1] + command[5:] if c.startswith(("--skip", "process", "replay")))
                    outcome = classify(result)
                    table[(kind, label)][outcome] += 1
                    if outcome in ("traceback", "crash"):
                        worst.append(f"{kind} / {label}: exit {result.returncode}\n{result.stderr[-2000:]}")
                    leftovers += sum(1 for p in wd.iterdir() if p.name.startswith("."))
                bad.unlink()
    print(f"{'damage':26} {'command':30} outcomes (of {args.trials})")
    for (kind, label), counts in table.items():
        print(f"{kind:26} {label:30} {dict(sorted(counts.items()))}")
    print(f"temporary files left behind: {leftovers}")
    for text in worst:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
