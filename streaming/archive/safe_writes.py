"""Output files of the offline commands: checked before any work, written atomically.

Raw data is irreplaceable, so no command may write over one of its inputs (compared by inode
and device, which also sees through symlinks, hard links and `./a/../raw.h5` spellings) or
over any existing file unless the user passed ``--force``. Every check runs before the
work starts, so a typo costs a second, not an hour of processing. Outputs are written to a
temporary file in the target directory and renamed into place, so an interrupted or failed
run leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from opmon.errors import OutputError


def same_file(a: Path, b: Path) -> bool:
    """True when `a` and `b` are the same file on disk (inode and device), whatever their names."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False  # one of them does not exist (yet)


def check_outputs(outputs: Iterable[Path | None], inputs: Iterable[Path], *, force: bool = False) -> None:
    """Refuse, before any work, outputs that would destroy an input, an existing file or cannot be written.

    Raises
    ------
    OutputError
        naming the output and why: it is an input, a directory, exists (without `force`), or
        its directory is missing or not writable.
    """
    inputs = list(inputs)
    seen: list[Path] = []
    for out in outputs:
        if out is None:
            continue
        for other in seen:
            if out.absolute() == other.absolute() or same_file(out, other):
                raise OutputError(f"{out}: named twice as an output")
        seen.append(out)
        for raw in inputs:
            if same_file(out, raw):
                raise OutputError(f"{out}: is the input {raw}; refusing to write over an input")
        if out.is_dir():
            raise OutputError(f"{out}: is a directory; give a file name")
        parent = out.absolute().parent
        if not parent.is_dir():
            raise OutputError(f"{out}: directory {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"{out}: directory {parent} is not writable")
        if (out.exists() or out.is_symlink()) and not force:
            raise OutputError(f"{out}: exists (use --force to overwrite)")


def _file_mode() -> int:
    """0666 minus the umask: what open() would give, not mkstemp's 0600."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def remove_stale_parts(target: Path) -> list[Path]:
    """Remove temporaries of `target` left by a killed run (SIGKILL skips every cleanup).

    A temporary is named ``.<target>.<pid>.<random>.part``; it is stale when no process with
    that pid is alive. Temporaries of a run still writing are left alone.
    """
    removed = []
    for part in target.absolute().parent.glob(f".{glob.escape(target.name)}.*.part"):
        pid_text = part.name[len(target.name) + 2:].split(".", 1)[0]
        if not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            part.unlink(missing_ok=True)
            removed.append(part)
        except PermissionError:
            pass  # alive, another user's
    return removed


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it replaces `target`, else it is removed.

    The file gets the permissions a plainly created file would (group-readable under the
    usual umask), so maps sit in the archive like the raw files next to them.
    """
    target = Path(target)
    remove_stale_parts(target)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".part", dir=target.absolute().parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _file_mode())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
