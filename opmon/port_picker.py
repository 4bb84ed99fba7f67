"""The one place that chooses TCP ports a process must be told before another binds them.

Wherever it can, code binds port 0 (or zmq's ``bind_to_random_port``) and reads the port back;
this is for the rest, where the port must be known before the process that binds it starts:
`opmon demo` writes its services' ports into their config and prints the dashboard URL before
the dashboard runs (`--port-base auto`, taken defaults moved up, `--dashboard-port 0`); tests
starting ``opmon archive``, ``opmon live`` or ``opmon demo``; benchmark senders in another
process.

Nothing is bound and released here (a released port can be handed to anybody before the child
binds it). Ports come from below the kernel's ephemeral range, where port-0 binds and outgoing
connections never land, outside the defaults a running ``opmon demo`` uses (5550-5558, 5006)
and the 20000-29999 ranges kept for hand-run demos; a port any socket on the machine holds
(read from /proc/net/tcp, tcp6) is skipped. Two callers can only meet if both draw the same
ports from this pool within the same moment.
"""
from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path

from opmon.ports import PortInUseError, is_free, taken, tcp_sockets

#: The pool: [LOW, HIGH) minus the demo defaults; HIGH is clipped to the ephemeral range.
LOW, HIGH = 10000, 20000
DEMO_DEFAULTS = frozenset(range(5550, 5559)) | {5006}
_rng = random.SystemRandom()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def ports_in_use() -> set[int]:
    """Local ports of every TCP socket on the machine (listening or connected), IPv4 and IPv6."""
    return {port for port, _, _ in tcp_sockets()}


def port_block(n: int) -> int:
    """First of `n` consecutive ports that no socket holds now (for ``--port-base``: the demo
    puts its channel k on base + k)."""
    high = min(HIGH, _ephemeral_low())
    used = ports_in_use() | DEMO_DEFAULTS
    for _ in range(200):
        base = _rng.randrange(LOW, high - n + 1)
        if not used.intersection(range(base, base + n)):
            return base
    raise RuntimeError(f"no block of {n} free ports in {LOW}-{high}")


def free_ports(n: int) -> list[int]:
    """`n` distinct ports that no socket holds now, for a config a service binds from."""
    base = port_block(n)
    return list(range(base, base + n))


def shift_to_free(host: str, ports: Mapping[str, int], step: int = 10, tries: int = 200) -> dict[str, int]:
    """The same ports moved up by a multiple of `step` (offsets kept, so the set stays
    recognisable) to the first position where all of them are free."""
    for k in range(1, tries + 1):
        moved = {name: port + k * step for name, port in ports.items()}
        if max(moved.values()) > 65535:
            break
        if not taken(host, moved):
            return moved
    raise PortInUseError(f"no free set of {len(ports)} ports found above {min(ports.values())}")


def next_free(host: str, port: int, tries: int = 100) -> int:
    """The first free port from `port` upwards (the dashboard's 5006, 5007, ...)."""
    for candidate in range(port, min(port + tries, 65536)):
        if is_free(host, candidate):
            return candidate
    raise PortInUseError(f"no free port in {port}..{port + tries - 1}")
