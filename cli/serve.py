"""`icseg serve`: the HTTP service under uvicorn. Settings come from ICSEG_* environment variables."""

from __future__ import annotations

import argparse
import logging

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

    from app.main import create_app
    from app.settings import Settings

    settings = Settings()
    app = create_app(settings)
    # uvicorn's own access log prints full paths and client addresses; app.middleware logs a safer line
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_config=None,
                timeout_graceful_shutdown=10)
    return 0
