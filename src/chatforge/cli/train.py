"""``chatforge train | eval | export | data check``: thin commands over the train package.

``train`` takes an optional YAML file and any field as ``--group.field value``
(``--lora.r 16``, ``--training.learning_rate 1e-4``, ``--data.packing true``); lists
are comma-separated (``--lora.target_modules q_proj,v_proj``). ``--help`` lists every
field with its help text and default.

Each ``run_*`` imports the training layer it drives (PyTorch, transformers, peft) when it
runs, so that building the parser for ``chatforge --help`` loads none of them.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from chatforge.cli.args import add_model_arguments, load_from_args
from chatforge.train.config import FORMATS, LOSS_MODES, field_specs, load_config

log = logging.getLogger(__name__)


# -- train -----------------------------------------------------------------------------
def add_train_command(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a model (LoRA, AdaLoRA, P-Tuning v2, full)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", default=None, help="YAML config (groups: model, data, method, ...)")
    groups: dict[str, Any] = {}
    for group, name, _kind, help_text, default in field_specs():
        g = groups.setdefault(group, p.add_argument_group(group))
        shown = ",".join(default) if isinstance(default, list) else default
        g.add_argument(
            f"--{group}.{name}",
            dest=f"{group}.{name}",
            default=argparse.SUPPRESS,
            metavar="V",
            help=f"{help_text} (default: {shown!r})",
        )
    p.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    from chatforge.train.trainer import train

    overrides = {k: v for k, v in vars(args).items() if "." in k}
    config = load_config(args.config, overrides)
    try:
        result = train(config)
    finally:
        _close_process_group()
    print(f"done: {result.global_step} steps; result in {result.final_dir}")
    if result.best_checkpoint:
        print(f"best checkpoint (lowest eval loss): {result.best_checkpoint}")
    return 0


# -- eval --------------------------------------------------------------------------------
def add_eval_command(sub: Any) -> None:
    p = sub.add_parser("eval", help="generate for a test set and score BLEU-4 / ROUGE / exact match")
    add_model_arguments(p)
    p.add_argument("data", help="test data (.json, .jsonl, .csv; any training format)")
    p.add_argument("--format", default="auto", choices=FORMATS)
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--response-column", default="response")
    p.add_argument("--plain", action="store_true", help="prompt/response without chat template")
    p.add_argument(
        "--output",
        default=None,
        help="predictions JSONL (default: predictions.jsonl beside --adapter or here)",
    )
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--limit", type=int, default=None, help="only the first N samples")
    p.add_argument("--tokenization", choices=["jieba", "char"], default="jieba", help="tokens for BLEU/ROUGE")
    p.set_defaults(handler=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from chatforge.train.data import FormatOptions
    from chatforge.train.dataset import PlainTemplate
    from chatforge.train.evaluate import evaluate_file

    model = load_from_args(args)
    if args.plain:
        model.template = PlainTemplate(model.tokenizer)
    out = Path(args.output) if args.output else Path(args.adapter or ".") / "predictions.jsonl"
    options = FormatOptions(args.format, args.prompt_column, args.response_column, plain=args.plain)
    result = evaluate_file(
        model,
        args.data,
        options,
        max_new_tokens=args.max_new_tokens,
        tokenization=args.tokenization,
        predictions_file=out,
        limit=args.limit,
    )
    print(json.dumps(result.metrics, indent=2))
    print(f"{len(result.predictions)} predictions in {out} ({result.seconds:.1f} s)")
    return 0


# -- export ------------------------------------------------------------------------------
def add_export_command(sub: Any) -> None:
    p = sub.add_parser("export", help="merge a LoRA/AdaLoRA result into a standalone model directory")
    p.add_argument("result", help="a training result: OUTPUT_DIR/final (or a checkpoint)")
    p.add_argument("--output", required=True, help="new directory for the merged model")
    p.add_argument("--base-model", default=None, help="base model (default: the one recorded at training)")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    p.add_argument(
        "--gguf", action="store_true", help="also write model-<type>.gguf for the llama.cpp engine"
    )
    p.add_argument(
        "--gguf-type",
        default="q4_k_m",
        help="f16, bf16, q8_0, q4_k_m (default), q4_0 or iq4_nl (faster for many concurrent streams on CPU)",
    )
    p.add_argument(
        "--gguf-template",
        default=None,
        help="the base model's GGUF (default: the base itself when it is one)",
    )
    p.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    from chatforge.train.export import export

    result = Path(args.result)
    if (result / "final").is_dir():
        result = result / "final"
    out = export(
        result,
        args.output,
        base_model=args.base_model,
        dtype=args.dtype,
        gguf=args.gguf,
        gguf_type=args.gguf_type,
        gguf_template=args.gguf_template,
    )
    print(f"merged model written to {out}; try: chatforge chat --model {out}")
    if args.gguf:
        gguf = out / f"model-{args.gguf_type}.gguf"
        print(f"GGUF for llama.cpp: chatforge chat --model {gguf} --engine hybrid --prefill-model {out}")
    return 0


# -- data check --------------------------------------------------------------------------
def add_data_command(sub: Any) -> None:
    p = sub.add_parser("data", help="inspect training data")
    dsub = p.add_subparsers(dest="data_command", required=True)
    c = dsub.add_parser("check", help="validate a data file, print statistics and the sanity-check table")
    c.add_argument("file")
    c.add_argument("--model", default="default", help="model whose tokenizer to use (default: embedded)")
    c.add_argument("--template", default="auto", help="auto, hf, chatml, chatglm3, react")
    c.add_argument("--format", default="auto", choices=FORMATS)
    c.add_argument("--prompt-column", default="prompt")
    c.add_argument("--response-column", default="response")
    c.add_argument("--plain", action="store_true", help="prompt/response without chat template")
    c.add_argument("--max-length", type=int, default=1024)
    c.add_argument("--truncation", default="drop_oldest", choices=["drop_oldest", "truncate", "error"])
    c.add_argument("--loss-mode", default="assistant", choices=LOSS_MODES)
    c.add_argument("--skip-invalid", action="store_true", help="report invalid records and go on")
    c.add_argument("--max-errors", type=int, default=20)
    c.add_argument("--tokens", type=int, default=0, help="rows of the sanity table (0: all)")
    c.set_defaults(handler=run_data_check)


def load_tokenizer(ref: str) -> Any:
    """Only the tokenizer of a model reference (no weights)."""
    from transformers import AutoTokenizer

    from chatforge.models.loader import load_weights, resolve

    source = resolve(ref)
    if source.kind == "hf":
        return AutoTokenizer.from_pretrained(source.path, local_files_only=True)
    if source.kind == "gguf":
        return AutoTokenizer.from_pretrained(
            source.path.parent, gguf_file=source.path.name, local_files_only=True
        )
    return load_weights(source, device="cpu")[1]


def run_data_check(args: argparse.Namespace) -> int:
    from chatforge.templates import get_template
    from chatforge.train.data import FormatOptions, load_samples
    from chatforge.train.dataset import encode_samples, sanity_table

    options = FormatOptions(args.format, args.prompt_column, args.response_column, plain=args.plain)
    samples, report = load_samples(args.file, options, args.skip_invalid, args.max_errors)
    tokenizer = load_tokenizer(args.model)
    template = get_template(args.template, tokenizer)
    examples, stats = encode_samples(samples, template, args.max_length, args.loss_mode, args.truncation)
    summary = {
        "file": args.file,
        "records": report.records,
        "valid": len(samples),
        "invalid_skipped": report.skipped,
        "formats": dict(report.formats),
        **stats.summary(),
    }
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    for reason, count in report.reasons().most_common():
        print(f"skipped {count} × {reason}")
    if examples:
        print(f"first sample ({examples[0].where}):")
        print(sanity_table(examples[0], tokenizer, limit=args.tokens or None))
    return 0


def _close_process_group() -> None:
    """Close the process group a launcher (torchrun, accelerate) opened: a process that exits
    with it open makes gloo and NCCL warn, and DeepSpeed can abort at exit."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
