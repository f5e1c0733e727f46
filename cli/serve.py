"""`icseg serve`: the HTTP service under uvicorn. Settings come from ICSEG_* environment variables."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys

from app.settings import settings_help
from cli.common import add_command

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = add_command(
        subparsers, "serve",
        help="run the HTTP service",
        description="Run the segmentation service (one process; the model is loaded once). "
        "Configure it with the environment variables below.",
        epilog=settings_help(),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port")
    parser.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    import uvicorn  # heavy imports only when the command runs

    from app import logs
    from app.main import create_app
    from app.settings import Settings

    logs.install()  # tracebacks without exception messages (no request content in the log)
    try:
        settings = Settings()
    except ValueError as exc:  # a keys setting that parses to no key, a malformed tenant:key, an unreadable file
        log.error("invalid settings: %s", exc)
        print(f"icseg serve: invalid settings: {exc}", file=sys.stderr)
        return 2
    if not settings.tenants and not _is_loopback(args.host):
        warning = (f"WARNING: listening on {args.host} without API keys: anyone who reaches this port can use the "
                   "service and read every stored prompt and job. Set ICSEG_API_KEYS=tenant:key,... (or "
                   "ICSEG_API_KEYS_FILE), or bind 127.0.0.1.")
        log.warning(warning)
        print(warning, file=sys.stderr)
    app = create_app(settings)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:  # SIGTERM/SIGINT: stop admitting first (app.stopping)
            app.state.stopping.begin()
            super().handle_exit(sig, frame)

    # uvicorn's own access log prints full paths and client addresses; app.middleware logs a safer line.
    # uvicorn's grace outlasts ours, so that a request cut off is answered by the app (503 JSON), not uvicorn
    config = uvicorn.Config(app, host=args.host, port=args.port, access_log=False, log_config=None,
                            timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 3)
    Server(config).run()
    return 0


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
