"""The ``chatforge`` command: ``chat``, ``serve``, ``model``, and the commands later layers add.

Each command is a small function over parsed arguments; sub-packages register their
own commands through ``COMMANDS`` so this module stays a thin entry point.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger("chatforge")

# name -> "module:function" that adds the subcommand to the parser. Modules are
# imported lazily so that `chatforge --help` stays fast.
COMMANDS: dict[str, str] = {
    "chat": "chatforge.cli:add_chat_command",
    "model": "chatforge.cli:add_model_command",
}
OPTIONAL_COMMANDS: dict[str, str] = {
    "serve": "chatforge.serve.cli:add_serve_command",
    "convert": "chatforge.models.chatglm_cli:add_convert_command",
    "train": "chatforge.train.cli:add_train_command",
    "eval": "chatforge.train.cli:add_eval_command",
    "export": "chatforge.train.cli:add_export_command",
    "data": "chatforge.train.cli:add_data_command",
    "bench": "chatforge.bench:add_bench_command",
}


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    from chatforge.engines import remote
    from chatforge.engines.select import GGUF_QUANTIZE, QUANTIZE

    g = p.add_argument_group("model")
    g.add_argument(
        "--model", default="default", help="'default' (embedded), a model directory or a .gguf file"
    )
    g.add_argument("--adapter", default=None, help="a LoRA/AdaLoRA/P-Tuning v2 adapter directory to attach")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    g.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16 (default: auto)")
    g.add_argument("--template", default="auto", help="auto, hf, chatml, chatglm3 or react (default: auto)")
    g.add_argument("--context-length", type=int, default=None, help="limit the context window (tokens)")
    g.add_argument(
        "--engine",
        default="auto",
        choices=["auto", "transformers", "llama.cpp", "hybrid", "remote"],
        help="inference engine (default: auto = hybrid or llama.cpp on CPU for GGUF models, else transformers)",
    )
    g.add_argument(
        "--prefill-model",
        default=None,
        help="the GGUF model's Hugging Face weights, for --engine hybrid's bf16 prefill (default model: built in)",
    )
    g.add_argument("--remote-url", default=None, help="an OpenAI-compatible endpoint for --engine remote")
    g.add_argument("--remote-model", default=None, help="the model name at --remote-url (default: its first)")
    g.add_argument(
        "--remote-api-key", default=None, help="API key for --remote-url (default: $CHATFORGE_REMOTE_API_KEY)"
    )
    g.add_argument(
        "--remote-max-tries",
        type=int,
        default=None,
        help="tries per request to --remote-url on connection errors and HTTP 429/502/503/504, the first "
        f"included (default: {remote.DEFAULT_MAX_TRIES}; 1 turns retries off)",
    )
    g.add_argument(
        "--remote-backoff",
        type=float,
        default=None,
        help="seconds before the second try, doubled for each further one, half of it random; a "
        f"Retry-After from the server overrides it (default: {remote.DEFAULT_BACKOFF:g})",
    )
    g.add_argument(
        "--remote-connect-timeout",
        type=float,
        default=None,
        help=f"seconds to open a connection to --remote-url (default: {remote.DEFAULT_CONNECT_TIMEOUT:g})",
    )
    g.add_argument(
        "--remote-read-timeout",
        type=float,
        default=None,
        help="the longest silence, in seconds, while reading a reply from --remote-url "
        f"(default: {remote.DEFAULT_READ_TIMEOUT:g})",
    )
    g.add_argument(
        "--quantize",
        default=None,
        choices=[*QUANTIZE, *GGUF_QUANTIZE],
        help="int8/int4: bitsandbytes (transformers, CUDA only); q4_0/iq4_nl/q8_0: the GGUF re-quantized "
        "once for llama.cpp (iq4_nl: more concurrent streams, a little lower quality; docs/engines.md)",
    )
    g.add_argument("--device-map", default=None, help="transformers device_map, e.g. 'auto' for several GPUs")
    g.add_argument(
        "--parallel", type=int, default=None, help="requests decoded together (llama.cpp 4, transformers 8)"
    )
    g.add_argument("--threads", type=int, default=None, help="CPU threads for the engine (default: all)")


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-p", type=float, default=0.8)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--max-new-tokens", type=int, default=512)
    g.add_argument("--seed", type=int, default=None)


def sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "repetition_penalty": args.repetition_penalty,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "do_sample": args.temperature > 0,
    }


def load_from_args(args: argparse.Namespace) -> Any:
    from chatforge.chat import load_model

    return load_model(
        args.model,
        device=args.device,
        dtype=args.dtype,
        template=args.template,
        adapter=args.adapter,
        context_length=args.context_length,
        **engine_kwargs(args),
    )


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The engine-related arguments of ``add_model_arguments`` as ``load_model`` keywords."""
    import os

    from chatforge.engines.select import REMOTE_OPTIONS, normalise_engine

    options = {}
    if getattr(args, "parallel", None):
        options["n_parallel"] = args.parallel
    if getattr(args, "threads", None):
        options["n_threads"] = args.threads
    if getattr(args, "prefill_model", None):
        options["prefill_model"] = args.prefill_model
    engine = getattr(args, "engine", "auto")
    if getattr(args, "remote_url", None) and normalise_engine(engine) in ("auto", "remote"):
        # --remote-max-tries and co. as RemoteEngine keywords; only where the remote engine
        # may be built, and build_engine drops them when it is not (auto with --quantize q4_0).
        for keyword in REMOTE_OPTIONS:
            value = getattr(args, f"remote_{keyword}", None)
            if value is not None:
                options[keyword] = value
    return {
        "engine": engine,
        "remote_url": getattr(args, "remote_url", None),
        "remote_model": getattr(args, "remote_model", None),
        "remote_api_key": getattr(args, "remote_api_key", None) or os.environ.get("CHATFORGE_REMOTE_API_KEY"),
        "quantize": getattr(args, "quantize", None),
        "device_map": getattr(args, "device_map", None),
        "engine_options": options or None,
    }


# -- chat ---------------------------------------------------------------------
CHAT_HELP = (
    "Commands: 'clear' empties the history, '/system <text>' sets the system prompt, 'stop' or Ctrl-D exits."
)


def add_chat_command(sub: Any) -> None:
    p = sub.add_parser("chat", help="interactive chat in the terminal", description=CHAT_HELP)
    add_model_arguments(p)
    add_sampling_arguments(p)
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--mode", choices=["chat", "tools", "code"], default="chat", help="chat, tools or code")
    p.add_argument(
        "--tools", action="append", default=[], metavar="MODULE:ATTR", help="load tools (repeatable)"
    )
    p.add_argument(
        "--workdir", default=None, help="code mode: where session files go (default ./chatforge-workspace)"
    )
    p.set_defaults(handler=run_chat)


def run_chat(args: argparse.Namespace) -> int:
    model = load_from_args(args)
    params = sampling_kwargs(args)
    if args.mode != "chat" or args.tools:
        from chatforge.agent.cli import run_agent_chat

        return run_agent_chat(model, args, params)
    session = model.session(system=args.system)
    print(f"chatforge · {model.name} · {CHAT_HELP}", flush=True)
    while True:
        try:
            line = input("\nUser: ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        text = line.strip()
        if not text:
            continue
        if text == "stop":
            return 0
        if text == "clear":
            session.clear()
            print("(history cleared)")
            continue
        if text.startswith("/system"):
            session.set_system(text[len("/system") :].strip())
            session.state.reset()
            print("(system prompt set)")
            continue
        print("\nAssistant: ", end="", flush=True)
        try:
            for event in session.stream(text, **params):
                if event.delta:
                    print(event.delta, end="", flush=True)
                if event.message is not None and event.message.tool_calls:
                    for call in event.message.tool_calls:
                        print(f"[tool call] {call.name}({call.arguments_json()})", end="", flush=True)
        except KeyboardInterrupt:
            print("\n(interrupted)")
        print(flush=True)


# -- model --------------------------------------------------------------------
def add_model_command(sub: Any) -> None:
    p = sub.add_parser("model", help="manage the embedded default model")
    msub = p.add_subparsers(dest="model_command", required=True)
    fetch = msub.add_parser("fetch", help="assemble, verify and convert the embedded default model (once)")
    fetch.set_defaults(handler=run_model_fetch)
    info = msub.add_parser("path", help="print where the embedded default model is cached")
    info.set_defaults(handler=run_model_path)


def run_model_fetch(args: argparse.Namespace) -> int:
    from chatforge.engines.select import llama_cpp_available, resolve_gguf
    from chatforge.models.embedded import DEFAULT, assemble_gguf, ensure_hf_dir

    gguf = assemble_gguf(DEFAULT)
    hf_dir = ensure_hf_dir(DEFAULT)
    print(f"default model ready: {hf_dir} (GGUF: {gguf})")
    loaded = resolve_gguf("default") if llama_cpp_available() else gguf
    if loaded != gguf:  # prepared now rather than on the first serve (engines/amx.py)
        print(f"llama.cpp's AMX path works here: it loads {loaded}")
    return 0


def run_model_path(args: argparse.Namespace) -> int:
    from chatforge.models.embedded import model_dir

    print(model_dir())
    return 0


# -- entry point --------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatforge", description="Run, extend and fine-tune a local chat LLM."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for target in COMMANDS.values():
        _resolve(target)(sub)
    for target in OPTIONAL_COMMANDS.values():
        module = target.partition(":")[0]
        try:
            add = _resolve(target)
        except ModuleNotFoundError as err:
            if err.name and module.startswith(err.name):
                continue  # that layer is not part of this build
            raise
        add(sub)
    return parser


def _resolve(target: str) -> Callable[[Any], None]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is None and getattr(args, "command", None) == "train":
        # A real command line (not a caller's argv): worth restarting under jemalloc.
        from chatforge.allocator import reexec_with_jemalloc

        reexec_with_jemalloc(["-m", "chatforge.cli", *sys.argv[1:]])
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if getattr(args, "command", None) == "train":
        from chatforge.allocator import jemalloc_loaded

        if jemalloc_loaded():
            log.info("memory allocator: jemalloc (CHATFORGE_JEMALLOC=0 keeps glibc's)")
    try:
        handler = getattr(args, "handler", None) or args.func
        return int(handler(args) or 0)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        # Errors meant for the user carry their own explanation; no traceback needed.
        log.debug("command failed", exc_info=True)
        print(f"chatforge: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
