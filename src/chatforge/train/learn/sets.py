"""The built-in prompt sets and the base model's answers to them.

``replay.json`` (prompts whose base answers are replayed under the KL term) and
``controls.json`` (the retention check's questions) are versioned and disjoint. The base
model answers both once, greedily in float32; the answers are cached under
``$CHATFORGE_HOME/learn/`` in a file named by the set's version and the model's
:func:`fingerprint`, so a later run on the same weights skips that generation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chatforge import env
from chatforge.messages import Message, Role
from chatforge.templates import Template
from chatforge.train.learn.answers import Answer, greedy

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
_SAMPLE = 4096  # values hashed per tensor: enough to tell checkpoints apart, fast on 0.5B+ models


@dataclass
class PromptSet:
    name: str  # "replay" or "controls"
    version: int
    prompts: list[str]
    forms: list[str]


def builtin_set(name: str) -> PromptSet:
    raw = json.loads((HERE / f"{name}.json").read_text(encoding="utf-8"))
    key = "prompts" if name == "replay" else "questions"
    items = raw[key]
    return PromptSet(name, int(raw["version"]), [i[key[:-1]] for i in items], [i["form"] for i in items])


def normalise(text: str) -> str:
    """A question compared loosely: case, surrounding space and end punctuation ignored."""
    return text.strip().casefold().rstrip("?？.。!！ ").strip()


def fingerprint(model: Any, template: Template) -> str:
    """A short hash of a model's weights (names, shapes and a strided sample of each
    tensor's values, in float32 so the dtype it was loaded in does not matter) and of its
    chat template's rendering: what the base model's answers depend on."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // _SAMPLE)
            h.update(f"{name}:{tuple(tensor.shape)}".encode())
            h.update(flat[::step][:_SAMPLE].float().cpu().numpy().tobytes())
    h.update(template.render_text([Message(Role.USER, "fingerprint")], add_generation_prompt=True).encode())
    return h.hexdigest()[:16]


def cache_path(name: str, version: int, model_hash: str, tokens: int) -> Path:
    return env.home() / "learn" / f"{name}-v{version}-{model_hash}-{tokens}t.json"


def base_answers(
    model: Any, template: Template, prompt_set: PromptSet, model_hash: str, max_new_tokens: int
) -> tuple[list[Answer], float]:
    """The base model's greedy float32 answers to ``prompt_set``, from the cache when there,
    and the seconds it took to make them (0.0 from the cache). ``model`` must be the base
    model (adapter disabled) in float32."""
    path = cache_path(prompt_set.name, prompt_set.version, model_hash, max_new_tokens)
    if path.exists():
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if raw.get("prompts") == prompt_set.prompts:
                return [Answer(a["question"], a["text"], a["ids"]) for a in raw["answers"]], 0.0
            log.warning("%s was made for other prompts; regenerating", path)
        except (OSError, ValueError, KeyError) as err:
            log.warning("unreadable cache %s (%s); regenerating", path, err)
    started = time.perf_counter()
    log.info(
        "the base model answers the %s set (v%d, %d prompts) once; cached in %s",
        prompt_set.name,
        prompt_set.version,
        len(prompt_set.prompts),
        path,
    )
    answers = greedy(model, template, prompt_set.prompts, max_new_tokens)
    seconds = time.perf_counter() - started
    body = {
        "set": prompt_set.name,
        "version": prompt_set.version,
        "model": model_hash,
        "max_new_tokens": max_new_tokens,
        "seconds": round(seconds, 1),
        "prompts": prompt_set.prompts,
        "answers": [a.__dict__ for a in answers],
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(body, ensure_ascii=False, indent=1), encoding="utf-8")
        tmp.replace(path)
    except OSError as err:  # a read-only or full cache only costs the next run the generation
        log.warning("could not cache the base answers in %s: %s", path, err)
    return answers, seconds
