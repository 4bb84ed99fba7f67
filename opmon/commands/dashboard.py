"""`opmon dashboard`: the live dashboard against a running experiment (issue 6).

Follows the display channels of the configured services and steers through the acquisition's
control channel. Binds 127.0.0.1 by default; prints a read-only URL and, when the steering
token is known and the output is a terminal, the URL that enables steering (opened once, it
swaps the token for a session cookie). Output that goes to a file or a pipe (a log) never
holds the token.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import webbrowser
from typing import TYPE_CHECKING

from opmon.config import Config, load_config
from opmon.ports import check_range, require_free
from opmon.supervisor import STOP_SIGNALS

if TYPE_CHECKING:     # bokeh takes most of a second to import: only when a dashboard starts
    from opmon.dashboard.server import DashboardServer

log = logging.getLogger(__name__)


def start_dashboard(config: Config, *, port: int = 5006, host: str | None = None, token: str | None = None,
                    open_browser: bool = False, max_altitude: float | None = None,
                    update_ms: int = 250) -> DashboardServer:
    """Start a dashboard following the services of `config`; returns the running server.

    Used by `opmon dashboard` and by `opmon demo` (which passes the token it generated).
    `token` None falls back to `[control] token`, then $OPMON_CONTROL_TOKEN; if none is known
    the dashboard still runs, and a user who appends ``?token=...`` is checked by the
    acquisition alone.
    """
    from opmon.dashboard.app import DashboardOptions
    from opmon.dashboard.server import DashboardConfig, DashboardServer
    from opmon.streaming.control import resolve_token
    token = resolve_token(token, config.control.token, generate=False)
    cfg = DashboardConfig(
        display_endpoints=[config.endpoint("display_live"), config.endpoint("display_acquisition"),
                           config.endpoint("display_archive")],
        control_endpoint=config.endpoint("control"), host=host or config.host, port=port, token=token,
        options=DashboardOptions(update_ms=update_ms, max_altitude=max_altitude))
    server = DashboardServer(cfg).start()
    print(f"opmon dashboard (read-only): {server.url}", flush=True)
    if token and sys.stdout.isatty():
        print(f"opmon dashboard (steering):  {server.steering_url}", flush=True)
    elif token:      # a log file: say how to steer without writing the token into it
        print(f"opmon dashboard (steering):  {server.url}?token=<the steering token>", flush=True)
    else:
        print("opmon dashboard: no steering token configured; append ?token=<token> to steer", flush=True)
    if open_browser:
        webbrowser.open(server.steering_url)
    return server


def _main(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    host = args.host or config.host
    if args.port != 0:
        check_range({"dashboard": args.port})
        require_free(host, {"dashboard": args.port})
    server = start_dashboard(config, port=args.port, host=args.host, token=args.token,
                             open_browser=args.open, max_altitude=args.max_altitude, update_ms=args.update_ms)
    received: list[int] = []

    def stop(signum: int, frame: object) -> None:
        received.append(signum)
        server.stop()

    for sig in STOP_SIGNALS:
        signal.signal(sig, stop)
    try:
        server.serve_forever()
    finally:
        server.stop()
    return 128 + received[0] if received else 0   # asked to stop: the supervisor does not restart it


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("dashboard", help="live dashboard with steering for a running experiment",
                              description=__doc__)
    p.add_argument("--config", help="TOML configuration (ports, host, [control] token)")
    p.add_argument("--port", type=int, default=5006, help="HTTP port of the dashboard (0 = any free port)")
    p.add_argument("--host", help="address to bind (default: the config's host, 127.0.0.1)")
    p.add_argument("--token", help="steering token (default: [control] token or $OPMON_CONTROL_TOKEN)")
    p.add_argument("--open", action="store_true", help="open the page in a web browser")
    p.add_argument("--max-altitude", type=float, default=None,
                   help="tilt (deg) at full colour saturation (default: the map's 99th percentile)")
    p.add_argument("--update-ms", type=int, default=250, help="display refresh period in ms (latest wins)")
    p.set_defaults(func=_main)
