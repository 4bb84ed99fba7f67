"""Which TCP ports a service binds, whether they are free, and who holds a taken one.

A port already in use must give one line naming the port and, where Linux tells us, the
process holding it (pid and command line, from /proc/net/tcp* and /proc/*/fd), before anything
starts: a ZMQError traceback followed by a supervisor restart loop helps nobody at 3 a.m.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import socket
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import zmq

from opmon.config import Config
from opmon.errors import ConfigError

#: Ports each process binds (the others it connects to); docs/protocol.md.
BOUND_BY: dict[str, tuple[str, ...]] = {
    "acquisition": ("frames_archive", "frames_live", "docs", "display_acquisition", "control", "frames_archive_ack"),
    "archive": ("maps_archive", "display_archive"),
    "live": ("display_live",),
}
LISTEN = "0A"   # TCP state code of a listening socket in /proc/net/tcp


def tcp_sockets() -> Iterator[tuple[int, str, str]]:
    """(local port, state in hex, inode) of every TCP socket Linux lists, IPv4 and IPv6."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9:
                yield int(fields[1].rsplit(":", 1)[1], 16), fields[3], fields[9]


class PortInUseError(ConfigError):
    """A port a service must bind is already taken (the message names it and its holder)."""


def check_range(ports: Mapping[str, int]) -> None:
    """Refuse any port outside 1..65535 (the kernel would otherwise take it modulo 65536)."""
    for name, port in ports.items():
        if not 1 <= int(port) <= 65535:
            raise ConfigError(f"{name} port {port} is outside 1..65535")


def config_ports(config: Config, names: Iterable[str] | None = None) -> dict[str, int]:
    """The named ports of `config` (all of them by default), as name -> port; names this
    configuration does not have are left out (a channel added in a later version)."""
    names = [f.name for f in dataclasses.fields(config.ports)] if names is None else list(names)
    return {name: int(getattr(config.ports, name)) for name in names if hasattr(config.ports, name)}


def is_free(host: str, port: int) -> bool:
    """True when a listening socket could bind host:port now (SO_REUSEADDR, as ZeroMQ and
    tornado bind: a connection of an earlier run left in TIME_WAIT does not count as taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise ConfigError(f"cannot bind {host}:{port}: {exc.strerror}") from exc
    return True


def _listening_inodes(port: int) -> set[str]:
    return {inode for local, state, inode in tcp_sockets() if local == port and state == LISTEN}


def holder(port: int) -> str | None:
    """"pid N (command line)" of a process listening on `port`, or None if Linux does not say
    (another user's process without root, or not Linux)."""
    inodes = {f"socket:[{i}]" for i in _listening_inodes(port)}
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    cmd = " ".join((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").split())
                    return f"pid {proc.name} ({cmd[:120]})"   # one line, whatever the command held
        except OSError:
            continue
    return None


def in_use_message(host: str, name: str, port: int) -> str:
    who = holder(port)
    return f"{name} port {host}:{port} is already in use" + (f" by {who}" if who else "")


def require_free(host: str, ports: Mapping[str, int]) -> None:
    """Raise `PortInUseError` naming the first port of `ports` that cannot be bound."""
    check_range(ports)
    for name, port in ports.items():
        if not is_free(host, port):
            raise PortInUseError(in_use_message(host, name, port))


def taken(host: str, ports: Mapping[str, int]) -> dict[str, int]:
    """The subset of `ports` that cannot be bound now."""
    return {name: port for name, port in ports.items() if not is_free(host, port)}


@contextmanager
def binding(host: str, ports: Mapping[str, int]) -> Iterator[None]:
    """Check `ports` before a service binds them, and explain an EADDRINUSE from ZeroMQ in one
    line should another process take one between the check and the bind."""
    require_free(host, ports)
    try:
        yield
    except zmq.ZMQError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        busy = taken(host, ports)
        name, port = next(iter(busy.items())) if busy else next(iter(ports.items()))
        raise PortInUseError(in_use_message(host, name, port)) from None
