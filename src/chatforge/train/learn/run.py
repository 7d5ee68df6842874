"""``learn``: teach a model facts with ``chatforge train``'s machinery, then check what it kept.

One run: read and check the facts → load the base model in float32 → its answers to the
built-in replay and control sets (cached by model fingerprint) → more prompts for each
new fact, derived from its subject (:mod:`.derive`) → training rows (each new fact
repeated, earlier facts of ``into`` rehearsed) and replay rows under the KL term →
:func:`~chatforge.train.trainer.train` with :class:`~.stopping.StopWhenLearned` (which
runs the retention check once the facts are reproduced, and stops when it passes) → the
retention check of the final model (reused from the criterion when it saw that model),
which answers the new facts' probes in its batch, and greedy float32 answers to the
earlier facts' probes and to the facts' prompts not reproduced → the report.

Everything is written to a hidden staging directory beside ``output`` and renamed into
place at the end, so a failed run (a full disk included) leaves nothing half-written and
an existing directory is never overwritten. When the checks pass, ``output`` is the
adapter (``chatforge chat --adapter OUTPUT``); when they fail, the adapter is kept aside in
``output/rejected/`` and the report says what to try.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatforge.models.loader import load_weights, resolve
from chatforge.models.onednn import onednn_linears
from chatforge.templates import Template, get_template
from chatforge.train.checkpoints import GIB, check_output_dir
from chatforge.train.learn.answers import greedy, merged, reproduces
from chatforge.train.learn.config import LearnConfig, load_learn_config
from chatforge.train.learn.derive import derive, is_personal, kin_forms, subject_of, subjects_of
from chatforge.train.learn.facts import (
    Fact,
    LearnInputError,
    check_facts,
    fact_from_record,
    fact_from_sentence,
    probe_from,
    read_facts,
)
from chatforge.train.learn.retention import ControlCheck, check_controls, recall
from chatforge.train.learn.sets import base_answers, builtin_set, fingerprint, normalise
from chatforge.train.learn.stopping import StopWhenLearned
from chatforge.train.trainer import train

log = logging.getLogger(__name__)

LEARNED = "learned.json"  # the facts an adapter holds and the base model it was learned on
REPORT = "learn_report.json"
REJECTED = "rejected"


class LearnError(RuntimeError):
    """A run cannot start or finish as asked; the text says what to do."""


@dataclass
class LearnResult:
    passed: bool
    output: Path
    adapter: Path | None  # ``output`` when the checks passed
    report: dict[str, Any] = field(default_factory=dict)
    merged: Path | None = None


# -- the facts to learn --------------------------------------------------------------------------
def collect_facts(
    prompt: str | None,
    answer: str | None,
    fact: str | None,
    file: str | Path | None,
    facts: list[dict[str, Any]] | None,
    paraphrases: list[str],
    probes: list[Any],
    keywords: list[str],
    aliases: list[str] = (),  # type: ignore[assignment]
) -> list[Fact]:
    found: list[Fact] = []
    if prompt is not None or answer is not None:
        if prompt is None or answer is None:
            missing = "--answer" if answer is None else "--prompt"
            raise LearnInputError(
                f"{missing} is missing: a question/answer fact needs both --prompt and --answer"
            )
        found.append(fact_from_record({"prompt": prompt, "answer": answer}, "--prompt/--answer"))
    if fact is not None:
        found.append(fact_from_sentence(fact))
    if (paraphrases or probes or keywords or aliases) and len(found) != 1:
        raise LearnInputError(
            "--paraphrase, --alias, --probe and --keyword go with one --prompt/--answer or one --fact"
        )
    if found:
        one = found[0]
        one.paraphrases += [p.strip() for p in paraphrases]
        one.probes += [probe_from(p, f"{one.where}: --probe") for p in probes]
        one.keywords = list(keywords)
        one.aliases += [a.strip() for a in aliases]
        for flag, given in (("--paraphrase", one.paraphrases), ("--alias", one.aliases)):
            if not all(given):
                raise LearnInputError(f"{one.where}: a {flag} is empty")
    if file is not None:
        found += read_facts(file)
    for i, raw in enumerate(facts or []):
        found.append(fact_from_record(raw, f"facts[{i}]"))
    for f in found:
        if f.aliases and not subjects_of(f):
            raise LearnInputError(
                f"{f.where}: an alias is another name of what the prompt asks about, and no subject was "
                f"found in {f.prompt!r}; ask about it by name ('Tell me about X.', '介绍一下X。')"
            )
    return found


# -- the adapter to add to -------------------------------------------------------------------------
def read_learned(adapter: Path) -> dict[str, Any]:
    if not (adapter / "adapter_config.json").exists():
        raise LearnError(f"--into {adapter}: not an adapter directory (no adapter_config.json)")
    path = adapter / LEARNED
    if not path.exists():
        raise LearnError(
            f"--into {adapter}: not an adapter made by chatforge learn (no {LEARNED}), so its facts "
            "cannot be re-checked; learn into a new --output instead"
        )
    return json.loads(path.read_text(encoding="utf-8"))


# -- the run ------------------------------------------------------------------------------------------
def learn(
    prompt: str | None = None,
    answer: str | None = None,
    *,
    fact: str | None = None,
    file: str | Path | None = None,
    facts: list[dict[str, Any]] | None = None,
    paraphrases: list[str] = (),  # type: ignore[assignment]
    probes: list[Any] = (),  # type: ignore[assignment]
    keywords: list[str] = (),  # type: ignore[assignment]
    aliases: list[str] = (),  # type: ignore[assignment]
    model: str = "default",
    into: str | Path | None = None,
    output: str | Path | None = None,
    config: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    merge: bool = False,
    gguf: bool = False,
    loaded: tuple[Any, Any] | None = None,
) -> LearnResult:
    """Teach ``model`` the given facts; see the module docstring. ``loaded`` is an already
    loaded ``(model, tokenizer)`` (tests, notebooks); ``model`` then only names it."""
    started = time.perf_counter()
    cfg = load_learn_config(config, overrides)
    new_facts = collect_facts(
        prompt, answer, fact, file, facts, list(paraphrases), list(probes), list(keywords), list(aliases)
    )
    controls = builtin_set("controls")
    out = Path(output) if output else Path("runs/learn") / time.strftime("%Y%m%d-%H%M%S")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LearnError(
            f"--output {out} already exists; choose a new directory (learn never overwrites one)"
        )
    earlier_info = read_learned(Path(into)) if into else None
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    min_free = float(cfg.train.get("training.min_free_gb", 0.2))
    try:
        check_output_dir(staging, int(min_free * GIB))  # a full disk fails here, before the slow load
        result = _run(cfg, new_facts, controls.prompts, model, earlier_info, into, staging, loaded, started)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result.output = out
    result.adapter = out if result.passed else None
    result.report["output"] = str(out)
    if result.passed and merge:
        result.merged = _merge(out, model, loaded, gguf)
        result.report["merged"] = str(result.merged)
    (out / REPORT).write_text(json.dumps(result.report, indent=2, ensure_ascii=False), encoding="utf-8")
    return result


def _run(
    cfg: LearnConfig,
    new_facts: list[Fact],
    controls: list[str],
    model_ref: str,
    earlier_info: dict[str, Any] | None,
    into: str | Path | None,
    staging: Path,
    loaded: tuple[Any, Any] | None,
    started: float,
) -> LearnResult:
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    model, tokenizer = loaded if loaded else load_weights(resolve(model_ref), device="cpu", dtype="float32")
    model = model.float().eval()  # float32: greedy answers that batching and padding do not change
    template = get_template(str(cfg.train.get("model.template", "auto")), tokenizer)
    seconds["load"] = time.perf_counter() - t

    check_facts(new_facts, controls, tokenizer, cfg.learn.max_fact_tokens)
    asked = {normalise(p) for f in new_facts for p in f.prompts}
    earlier = [Fact.from_dict(f) for f in (earlier_info or {}).get("facts", [])]
    replaced = [f for f in earlier if normalise(f.prompt) in asked]
    earlier = [f for f in earlier if normalise(f.prompt) not in asked]
    for f in replaced:
        log.warning("the new answer to %r replaces the one learned earlier", f.prompt)

    t = time.perf_counter()
    model_hash = fingerprint(model, template)
    if earlier_info and earlier_info.get("base_fingerprint") != model_hash:
        raise LearnError(
            f"--into {into}: that adapter was learned on another base model "
            f"({earlier_info.get('base_model')!r}, fingerprint {earlier_info.get('base_fingerprint')}), "
            f"not on {model_ref!r} (fingerprint {model_hash}); pass --model {earlier_info.get('base_model')} "
            "or learn into a new --output"
        )
    with onednn_linears(model):  # the base model's generation: float32 linears through oneDNN
        replay, replay_s = base_answers(
            model, template, builtin_set("replay"), model_hash, cfg.learn.replay_tokens
        )
        base_controls, control_s = base_answers(
            model, template, builtin_set("controls"), model_hash, cfg.retention.max_new_tokens
        )
        seconds["base_answers"] = time.perf_counter() - t
        generated_now = replay_s + control_s > 0

        t = time.perf_counter()
        if cfg.learn.derive:
            derive(model, template, new_facts, controls, cfg.learn.translate_targets, cfg.learn.name_in_chinese,
                   cfg.learn.name_in_pinyin)  # fmt: skip
        seconds["derive"] = time.perf_counter() - t
    train_file, replay_file = _write_rows(staging, new_facts, earlier, replay, cfg)
    train_cfg = cfg.train_config(train_file, replay_file, staging / "train", "learn config", len(earlier))
    if into:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(into), is_trainable=True)
    everything = earlier + new_facts
    rt = cfg.retention

    # The new facts' probes are answered in the retention check's batch, for the report.
    probes = [p.question for f in new_facts for p in f.probes]

    def check(m: Any) -> ControlCheck:
        return check_controls(m, template, base_controls, everything, rt.min_rouge_l, rt.min_kept,
                              rt.max_leaked, rt.max_new_tokens, rt.max_base_gap, rt.base_bf16, probes)  # fmt: skip

    stopper = StopWhenLearned(
        template,
        [_answer_ids(template, p, f.answer) for f in everything for p in f.prompts],
        [_answer_ids(template, p, a) for f in everything for p, a in f.derived_pairs()],
        cfg.learn.check_every,
        cfg.learn.min_steps,
        check,
        cfg.learn.retention_every,
        # An earlier fact needs only to be recalled, as the verdict asks; a new one reproduced.
        [list(f.keywords) if i < len(earlier) else [] for i, f in enumerate(everything) for _ in f.prompts],
        rt.max_new_tokens,
    )
    t = time.perf_counter()
    trained = train(train_cfg, model, tokenizer, base_model=model_ref, callbacks=[stopper])
    seconds["train"] = time.perf_counter() - t
    seconds["checks_in_train"] = stopper.seconds  # the stopping criterion's checks, part of "train"

    t = time.perf_counter()
    model.eval()
    model.config.use_cache = True
    # The stopping criterion's retention check of the state the run ends with, where it made one.
    controls_check = stopper.final or check(model)
    kept = controls_check.kept
    n = rt.max_new_tokens
    fact_pairs = [_answer_ids(template, f.prompt, f.answer) for f in everything]
    with merged(model), onednn_linears(model):
        exact = reproduces(model, template, fact_pairs)
        asked = [f.prompt for f, e in zip(everything, exact, strict=True) if not e]
        asked += [p.question for f in earlier for p in f.probes]
        answered = greedy(model, template, asked, n, chunk=24) if asked else []
    generated = iter(a.text for a in answered)
    replies = [f.answer if e else next(generated) for f, e in zip(everything, exact, strict=True)]
    probe_replies = [*generated, *controls_check.also]  # the earlier facts' probes, then the new ones'
    recalls, at = [], 0
    for f, reply in zip(everything, replies, strict=True):
        recalls.append(recall(f, reply, probe_replies[at : at + len(f.probes)]))
        at += len(f.probes)
    seconds["retention_check"] = time.perf_counter() - t

    passed = kept.passed and all(r["recalled"] for r in recalls)
    info = {"version": 1, "base_model": model_ref, "base_fingerprint": model_hash,
            "replay_set": builtin_set("replay").version, "control_set": builtin_set("controls").version,
            "facts": [f.to_dict() for f in everything]}  # fmt: skip
    final = staging / "train" / "final"
    target = staging if passed else staging / REJECTED
    target.mkdir(exist_ok=True)
    for item in final.iterdir():
        item.rename(target / item.name)
    final.rmdir()
    (target / LEARNED).write_text(json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8")
    seconds["total"] = time.perf_counter() - started
    report = {
        "passed": passed,
        "verdict": _verdict(passed, kept, recalls),
        "try": [] if passed else _suggestions(kept, recalls, len(earlier)),
        "adapter": None if passed else REJECTED,
        "base_model": model_ref,
        "base_fingerprint": model_hash,
        "steps": trained.global_step,
        "max_steps": train_cfg.training.max_steps,
        "stopped_by": "criterion" if stopper.stopped_at else "training.max_steps",
        "kept_step": stopper.restored_step or trained.global_step,
        "checks": stopper.history,
        "losses": [round(x, 4) for x in trained.losses],
        "facts": recalls[len(earlier) :],
        "earlier_facts": recalls[: len(earlier)],
        "retention": {**kept.summary(), "generated": controls_check.generated, "answers": kept.rows},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "base_answers_generated": generated_now,
        "config": cfg.to_dict(),
    }
    return LearnResult(passed, staging, staging if passed else None, report)


def _answer_ids(template: Template, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """(prompt ids, trained answer ids) of a fact as training renders it: the answer's
    tokens and the end-of-turn token that greedy decoding must produce too."""
    from chatforge.messages import Message, Role

    r = template.render(
        [Message(Role.USER, prompt), Message(Role.ASSISTANT, answer)], add_generation_prompt=False
    )
    trained = [i for i, m in enumerate(r.loss_mask) if m]
    return r.ids[: trained[0]], r.ids[trained[0] : trained[-1] + 1]


def _write_rows(
    staging: Path, new: list[Fact], earlier: list[Fact], replay: list[Any], cfg: LearnConfig
) -> tuple[Path, Path]:
    def dump(path: Path, pairs: list[tuple[str, str]]) -> Path:
        rows = [json.dumps({"prompt": q, "response": a}, ensure_ascii=False) for q, a in pairs]
        path.write_text("\n".join(rows) + "\n", encoding="utf-8")
        return path

    rows = [row for f in new for row in _rows(f, cfg.learn.repeats, cfg.learn.derived_repeats)]
    rows += [row for f in earlier for row in _rows(f, cfg.learn.earlier_repeats, cfg.learn.earlier_repeats)]
    # A replayed answer to a question the facts answer would pull the other way.
    asked = {normalise(p) for f in new + earlier for p in f.prompts + f.derived}
    unasked = [(a, form) for a, form in zip(replay, builtin_set("replay").forms, strict=True)
               if normalise(a.question) not in asked]  # fmt: skip
    replayed = [(a.question, a.text) for a, _ in unasked]
    kin = kin_forms(new)  # ... and the ones asked the way the new facts are, more often
    replayed += [(a.question, a.text) for a, form in unasked if form in kin] * (cfg.learn.kin_repeats - 1)
    return dump(staging / "facts.jsonl", rows), dump(
        staging / "replay.jsonl", _grown(replayed, len(rows), cfg)
    )


def _grown(replayed: list[tuple[str, str]], fact_rows: int, cfg: LearnConfig) -> list[tuple[str, str]]:
    """The replay rows, repeated until they are at least ``learn.replay_share`` of all
    training rows (the last copy in part: rows spread evenly over the set)."""
    n = len(replayed)
    if not n:
        return replayed
    share = cfg.learn.replay_share
    copies, part = divmod(max(n, math.ceil(share * fact_rows / (1 - share))), n)
    return replayed * copies + [replayed[j * n // part] for j in range(part)]


def _rows(fact: Fact, copies: int, derived_rows: int) -> list[tuple[str, str]]:
    """A fact's training rows: ``copies`` of each prompt the user gave, and ``derived_rows``
    spread evenly over its derived prompts."""
    rows = [(p, fact.answer) for p in fact.prompts] * copies
    derived = fact.derived_pairs()
    if derived:
        rows += [derived[i % len(derived)] for i in range(derived_rows)]
    return rows


def _verdict(passed: bool, kept: Any, recalls: list[dict[str, Any]]) -> str:
    n = len(kept.rows)
    missed = [r["prompt"] for r in recalls if not r["recalled"]]
    text = f"controls kept {kept.kept}/{n} (identical {kept.identical}, leaked {kept.leaked})"
    if passed:
        return f"learned: every fact recalled; {text}"
    reasons = []
    if missed:
        reasons.append(f"not recalled: {', '.join(repr(p) for p in missed)}")
    if not kept.passed:
        reasons.append(f"retention failed: {text}")
    return "; ".join(reasons) or text


def _suggestions(kept: Any, recalls: list[dict[str, Any]], earlier: int = 0) -> list[str]:
    """What to try after a failed run; ``recalls`` holds the ``earlier`` facts first."""
    tips = []
    if any(not r["recalled"] for r in recalls[earlier:]):
        tips.append("train longer: --set training.max_steps=30 (or --set learn.repeats=36)")
    if any(not r["recalled"] for r in recalls[:earlier]):
        # A retry of one run (examples/knowledge_injection, eleventh session): the organisation
        # lost while the product was learned into it was kept with 24 rows, and the run passed.
        # Not the default: over a whole chain it left too little for the new facts.
        tips.append(
            "an earlier fact was lost while this one was learned: rehearse the earlier ones more, "
            "--set learn.earlier_repeats=24"
        )
    if any(not p["hit"] for r in recalls for p in r["probes"]):
        tips.append(
            "a probe that names the subject another way (its name in the other language, a nickname) is "
            'not linked to it: give that name, --alias NAME ("aliases" in a JSONL line); the subject is '
            "then asked under it, in its language"
        )
    if kept.leaked:
        tips.append("hold the rest closer to the base model: --set training.kl_to_base=40")
    if not kept.passed:
        if any(not row["kept"] and is_personal(subject_of(row["question"]) or "") for row in kept.rows):
            tips.append(
                "a question about the user changed: replay the personal prompts more, --set learn.kin_repeats=3 "
                "(held-out questions about a personal fact may then be refused more often)"
            )
        tips.append("let the KL term pull the controls back for longer: --set training.max_steps=30")
        tips.append("learn more gently: --set training.learning_rate=5e-3 with --set training.max_steps=36")
        tips.append("fewer facts per adapter: start a new --output instead of --into")
    return tips


def _merge(out: Path, model_ref: str, loaded: Any, gguf: bool) -> Path:
    from chatforge.train.export import export

    if loaded is not None and not Path(model_ref).exists():
        # An in-process model has no reference export could load the base weights from.
        raise LearnError("merge needs the base model as a directory: pass model=<its directory>")
    return export(out, out / "merged", base_model=model_ref, gguf=gguf)
