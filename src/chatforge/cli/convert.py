"""``chatforge convert chatglm SRC DST`` (and ``python -m chatforge.cli.convert``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def _configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "src", type=Path, help="ChatGLM2/3 checkpoint directory (or, with --adapter-of, an adapter)"
    )
    parser.add_argument("dst", type=Path, help="output directory")
    parser.add_argument(
        "--dtype", default=None, help="cast weights: float32, bfloat16 or float16 (default: keep)"
    )
    parser.add_argument(
        "--variant", choices=("chatglm2", "chatglm3"), default=None, help="override format detection"
    )
    parser.add_argument(
        "--adapter-of",
        type=Path,
        default=None,
        metavar="BASE",
        help="SRC is an adapter trained on the original-layout BASE (a PEFT LoRA/AdaLoRA directory or a "
        "P-Tuning v2 prefix checkpoint); BASE is the original checkpoint or its conversion",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=convert_command)
    return parser


def add_chatglm_convert_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``chatglm`` on an existing ``convert`` command's subparsers."""
    parser = subparsers.add_parser(
        "chatglm",
        help="convert a ChatGLM2/3 checkpoint (or an adapter) to the native GLM layout",
        description="Write a standard Hugging Face GLM directory (or a mapped PEFT adapter) from ChatGLM2/3.",
    )
    return _configure_parser(parser)


def add_convert_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``convert chatglm SRC DST`` on the top-level CLI subparsers; handler in ``args.func``."""
    convert = subparsers.add_parser("convert", help="convert checkpoints to formats chatforge loads natively")
    add_chatglm_convert_parser(convert.add_subparsers(dest="convert_format", required=True))
    return convert


def convert_command(args: argparse.Namespace) -> int:
    """Run ``convert chatglm``; print the output directory. Returns a process exit code."""
    # The conversion needs PyTorch and transformers; `chatforge --help` does not.
    from chatforge.models.chatglm.adapters import convert_chatglm_adapter, convert_chatglm_ptuning
    from chatforge.models.chatglm.convert import ChatGLMConversionError, convert_chatglm

    try:
        if args.adapter_of is None:
            out = convert_chatglm(
                args.src, args.dst, dtype=args.dtype, progress=not args.no_progress, variant=args.variant
            )
        elif (Path(args.src) / "adapter_config.json").is_file():
            out = convert_chatglm_adapter(args.src, args.dst, args.adapter_of)
        else:
            out = convert_chatglm_ptuning(args.src, args.dst, args.adapter_of)
    except (ChatGLMConversionError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m chatforge.cli.convert SRC DST``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = _configure_parser(
        argparse.ArgumentParser(
            prog="python -m chatforge.cli.convert",
            description="Convert a ChatGLM2/3 checkpoint (or an adapter) to the native transformers GLM layout.",
        )
    )
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
