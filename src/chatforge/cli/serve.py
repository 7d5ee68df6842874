"""``chatforge serve``: load a model (optionally with an adapter) and run the HTTP server."""

from __future__ import annotations

import argparse
import ipaddress
import logging
from pathlib import Path
from typing import Any

import uvicorn

from chatforge import env
from chatforge.agent.tools.registry import load_tools
from chatforge.cli.args import add_model_arguments, load_from_args
from chatforge.serve.agent_sessions import AgentOptions
from chatforge.serve.app import create_app
from chatforge.serve.settings import ServeSettings

log = logging.getLogger(__name__)

def add_serve_command(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="OpenAI-compatible HTTP server and web UI",
        description="Serve a model over an OpenAI-compatible API (/v1/chat/completions, ...) "
        "with a web UI at /.",
    )
    add_model_arguments(p)
    g = p.add_argument_group("server")
    g.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)"
    )
    g.add_argument("--port", type=int, default=8000)
    g.add_argument(
        "--api-key", default=None, help="require 'Authorization: Bearer KEY' (default: $CHATFORGE_API_KEY)"
    )
    g.add_argument("--served-model-name", default=None, help="model id reported by /v1/models")
    g.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow browser calls (repeatable, * for any)",
    )
    g.add_argument(
        "--max-queue", type=int, default=16, help="requests waiting beyond this get 503 (default: 16)"
    )
    g.add_argument("--request-timeout", type=float, default=300.0, help="seconds per request (default: 300)")
    g.add_argument(
        "--max-tokens", type=int, default=None, help="default max_tokens when a request gives none"
    )
    g.add_argument(
        "--max-body-mb",
        type=float,
        default=8.0,
        help="request bodies over this many MiB get 413 (default: 8)",
    )
    g.add_argument(
        "--batch-wait-ms",
        type=float,
        default=None,
        help="an idle engine waits this long for requests sent together, to start them in "
        "one batch (default: 5; 0: start each at once)",
    )
    g.add_argument("--no-ui", action="store_true", help="do not serve the web UI at /")
    g.add_argument(
        "--conversations-db",
        default=None,
        metavar="FILE",
        help="the web UI's saved conversations (default: $CHATFORGE_HOME/ui/conversations.sqlite3)",
    )
    a = p.add_argument_group("web UI agent (Tool and Code Interpreter modes)")
    a.add_argument(
        "--tools",
        action="append",
        default=[],
        metavar="MODULE:ATTR",
        help="tools for Tool mode besides the built-in ones (repeatable)",
    )
    a.add_argument(
        "--workdir",
        default=None,
        metavar="DIR",
        help="keep code sessions' files under DIR (default: a temporary directory removed on exit)",
    )
    p.set_defaults(handler=run_serve)


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    if args.max_queue < 1:
        raise ValueError("--max-queue must be at least 1")
    if args.request_timeout <= 0:
        raise ValueError("--request-timeout must be positive")
    if args.max_body_mb <= 0:
        raise ValueError("--max-body-mb must be positive")
    if args.batch_wait_ms is not None and not 0 <= args.batch_wait_ms <= 1000:
        raise ValueError("--batch-wait-ms must be between 0 and 1000")
    return ServeSettings(
        api_key=args.api_key or env.api_key(),
        model_id=args.served_model_name,
        cors_origins=list(args.cors_origin),
        max_queue=args.max_queue,
        request_timeout=args.request_timeout,
        default_max_tokens=args.max_tokens,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        ui=not args.no_ui,
        conversations_db=Path(args.conversations_db).expanduser() if args.conversations_db else None,
        batch_wait_ms=args.batch_wait_ms,
    )


def agent_options_from_args(args: argparse.Namespace) -> AgentOptions:
    tools: list[Any] = []
    if args.tools:
        for spec in args.tools:
            tools += load_tools(spec)
    return AgentOptions(tools=tools, workdir=Path(args.workdir).expanduser() if args.workdir else None)


def run_serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if not settings.api_key and not _is_loopback(args.host):
        log.warning("serving on %s without an API key: anyone who can reach it can use the model", args.host)
    agent_options = agent_options_from_args(args)
    model = load_from_args(args)
    app = create_app(model, settings, agent_options=agent_options)
    log.info(
        "serving %s on http://%s:%d (API key %s)",
        settings.model_id or model.name,
        args.host,
        args.port,
        "required" if settings.api_key else "not required",
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False)
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
