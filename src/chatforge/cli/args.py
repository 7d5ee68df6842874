"""The option groups several commands share (model, sampling) and what they become:
a loaded `ChatModel` and ``generate`` keyword arguments."""

from __future__ import annotations

import argparse
from typing import Any

from chatforge import chat, env
from chatforge.chat import ChatModel
from chatforge.engines import remote
from chatforge.engines.base import sampling_options
from chatforge.engines.select import GGUF_QUANTIZE, QUANTIZE, REMOTE_OPTIONS, normalise_engine


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default="default",
        help="'default' (the embedded Qwen2.5-Coder-0.5B), another embedded model's name "
        "(chatforge model list: qwen2.5-coder-1.5b-instruct or 1.5b), a model directory or a .gguf file",
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
    g.add_argument(
        "--constrain",
        default="on",
        choices=["on", "off"],
        help="tool calls and JSON replies constrained to their schemas while decoding, on the local "
        "engines (default: on; docs/serving.md)",
    )
    g.add_argument(
        "--speculative",
        default=None,
        type=speculative_value,
        metavar="off|ngram|draft:MODEL",
        help="speculative decoding on the llama.cpp engines: ngram drafts from the context (the "
        "default, adaptive), draft:MODEL a smaller model with the same tokenizer (e.g. draft:0.5b "
        "for the 1.5b model), or off (docs/engines.md)",
    )


def speculative_value(text: str) -> str:
    """``--speculative``'s value, checked here so that a typo is an argument error."""
    from chatforge.engines.speculative import parse_speculation

    try:
        return str(parse_speculation(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-p", type=float, default=0.8)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--max-new-tokens", type=int, default=512)
    g.add_argument("--seed", type=int, default=None)


def sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``ChatModel.generate`` keyword arguments from the sampling flags."""
    return sampling_options(vars(args), args.max_new_tokens)


def load_from_args(args: argparse.Namespace) -> ChatModel:
    return chat.load_model(
        args.model,
        device=args.device,
        dtype=args.dtype,
        template=args.template,
        adapter=args.adapter,
        context_length=args.context_length,
        constrain=getattr(args, "constrain", "on") == "on",
        **engine_kwargs(args),
    )


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The engine-related arguments of ``add_model_arguments`` as ``load_model`` keywords."""
    options = {}
    if getattr(args, "parallel", None):
        options["n_parallel"] = args.parallel
    if getattr(args, "threads", None):
        options["n_threads"] = args.threads
    if getattr(args, "prefill_model", None):
        options["prefill_model"] = args.prefill_model
    if getattr(args, "speculative", None):
        options["speculative"] = args.speculative
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
        "remote_api_key": getattr(args, "remote_api_key", None) or env.remote_api_key(),
        "quantize": getattr(args, "quantize", None),
        "device_map": getattr(args, "device_map", None),
        "engine_options": options or None,
    }
