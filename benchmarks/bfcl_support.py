"""BFCL (the Berkeley Function-Calling Leaderboard, package ``bfcl-eval``) as a library for
``agent_quality.py``: its data files, its function-doc conversion to OpenAI ``tools`` and
its AST checker, with nothing of its model handlers.

``bfcl-eval`` is installed with ``--no-deps`` (``make test`` does it): its dependencies are
every provider's SDK (openai, anthropic, cohere, mistral, google-genai, vllm, ...), none of
which the checker uses. Two of its modules that the checker's import chain reaches would
pull them, or packages that are not installed, in; they are replaced in ``sys.modules``
before the first import by small modules holding just what is used from them:

* ``bfcl_eval.constants.model_config`` imports every model handler, hence every provider
  SDK, to build ``MODEL_CONFIG_MAPPING``. The AST checker reads one field from it,
  ``underscore_to_dot``, for the model being scored; the shim holds that one entry.
* ``bfcl_eval.model_handler.parser.java_parser`` and ``js_parser`` import ``tree_sitter``
  grammars, for the Java and JavaScript categories this benchmark does not run; the shims'
  functions raise if called. ``model_handler.utils`` (the tool conversion) imports them.

The rest is BFCL's own code, unchanged: ``load_dataset_entry`` (the questions, with the
language hint BFCL adds to every function description), ``load_ground_truth_entry``,
``convert_to_tool`` with the OpenAI chat-completions style (BFCL's types such as ``dict``,
``float``, ``tuple`` and ``any`` mapped to JSON Schema, ``.`` in names turned into ``_``),
and ``ast_checker``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import types
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

BFCL_VERSION = "2026.3.23"
INSTALL_HINT = f"pip install --no-deps bfcl-eval=={BFCL_VERSION}  (make test installs it)"
CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance")
# The name the checker knows the scored model by. Like BFCL's OpenAI models, its tools have
# "." in function names replaced by "_" (OpenAI's pattern for names allows neither "." nor
# spaces), so the checker compares the expected names with the same replacement.
MODEL_NAME = "chatforge"


class BFCLMissing(RuntimeError):
    """bfcl-eval is not installed, or not the version this harness was written against."""


@dataclass
class Sample:
    """One BFCL question with what the checker needs to score a reply to it."""

    id: str
    category: str
    messages: list[dict[str, Any]]
    functions: list[dict[str, Any]]  # BFCL's function docs, as the checker reads them
    answer: list[dict[str, Any]] | None  # the possible answers; None for irrelevance


@dataclass
class Score:
    passed: bool
    error: str | None  # the checker's error (its messages joined), None when passed
    error_type: str | None = None


def _model_config_shim() -> types.ModuleType:
    module = types.ModuleType("bfcl_eval.constants.model_config")
    module.__doc__ = "chatforge's stand-in: the one entry the AST checker reads (see bfcl_support.py)."
    module.MODEL_CONFIG_MAPPING = {MODEL_NAME: types.SimpleNamespace(underscore_to_dot=True)}
    return module


def _parser_shim(name: str, function: str, language: str) -> types.ModuleType:
    module = types.ModuleType(name)

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"parsing {language} calls needs tree_sitter, which this harness leaves out"
        )

    setattr(module, function, unavailable)
    return module


@cache
def bfcl() -> types.SimpleNamespace:
    """BFCL's functions this harness uses, imported once behind the shims above."""
    try:
        from importlib.metadata import version

        import bfcl_eval
    except ImportError as err:
        raise BFCLMissing(f"bfcl-eval is not installed: {INSTALL_HINT}") from err
    found = version("bfcl-eval")
    if found != BFCL_VERSION:
        raise BFCLMissing(
            f"bfcl-eval {found} is installed; this harness needs {BFCL_VERSION}: {INSTALL_HINT}"
        )
    # BFCL makes result/, score/ and .file_locks/ under this root when imported: by default
    # next to the installed package, in the virtual environment.
    os.environ.setdefault("BFCL_PROJECT_ROOT", str(Path(tempfile.gettempdir()) / "chatforge-bfcl"))
    parser = "bfcl_eval.model_handler.parser"
    shims = {
        "bfcl_eval.constants.model_config": _model_config_shim(),
        f"{parser}.java_parser": _parser_shim(f"{parser}.java_parser", "parse_java_function_call", "Java"),
        f"{parser}.js_parser": _parser_shim(
            f"{parser}.js_parser", "parse_javascript_function_call", "JavaScript"
        ),
    }
    for name, module in shims.items():
        sys.modules.setdefault(name, module)

    from bfcl_eval.constants.enums import Language, ModelStyle
    from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI
    from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker
    from bfcl_eval.model_handler.utils import convert_to_tool
    from bfcl_eval.utils import (
        is_empty_output,
        is_function_calling_format_output,
        load_dataset_entry,
        load_ground_truth_entry,
    )

    return types.SimpleNamespace(
        package=bfcl_eval,
        Language=Language,
        ModelStyle=ModelStyle,
        GORILLA_TO_OPENAPI=GORILLA_TO_OPENAPI,
        ast_checker=ast_checker,
        convert_to_tool=convert_to_tool,
        is_empty_output=is_empty_output,
        is_function_calling_format_output=is_function_calling_format_output,
        load_dataset_entry=load_dataset_entry,
        load_ground_truth_entry=load_ground_truth_entry,
    )


def load_samples(category: str, limit: int | None = None) -> list[Sample]:
    """The first ``limit`` questions of a category in BFCL's file order (all when None)."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown BFCL category {category!r}; choose from {', '.join(CATEGORIES)}")
    lib = bfcl()
    entries = lib.load_dataset_entry(category)
    answers = {} if category == "irrelevance" else {a["id"]: a for a in lib.load_ground_truth_entry(category)}
    samples = []
    for entry in entries[:limit]:
        if len(entry["question"]) != 1:
            raise ValueError(f"{entry['id']}: {len(entry['question'])} turns; these categories have one")
        answer = None
        if category != "irrelevance":
            if entry["id"] not in answers:
                raise ValueError(f"{entry['id']}: no possible answer in BFCL's files")
            answer = answers[entry["id"]]["ground_truth"]
        samples.append(Sample(entry["id"], category, entry["question"][0], entry["function"], answer))
    return samples


def to_openai_tools(functions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """BFCL's function docs as OpenAI chat-completions ``tools``, by BFCL's own conversion
    (the one its OpenAI function-calling handler uses). The input is not changed."""
    lib = bfcl()
    return lib.convert_to_tool(functions, lib.GORILLA_TO_OPENAPI, lib.ModelStyle.OPENAI_COMPLETIONS)


def to_model_output(
    tool_calls: list[dict[str, Any]] | None, content: str | None
) -> list[dict[str, Any]] | str:
    """A reply in BFCL's raw function-calling form, as its OpenAI handler records it:
    ``[{name: arguments_json}, ...]`` when the reply calls tools, else the reply's text.

    ``tool_calls`` are OpenAI wire dicts (``{"function": {"name", "arguments"}}``)."""
    if not tool_calls:
        return content or ""
    return [{call["function"]["name"]: call["function"]["arguments"]} for call in tool_calls]


def decode(output: list[dict[str, Any]] | str) -> list[dict[str, Any]]:
    """BFCL's ``decode_ast`` for function-calling models: each call's arguments parsed from
    JSON. A text reply, or arguments that are not a JSON object, raise ``ValueError``."""
    if isinstance(output, str):
        raise ValueError("the reply holds no tool call")
    decoded = []
    for call in output:
        ((name, arguments),) = call.items()
        try:
            decoded.append({name: json.loads(arguments)})
        except json.JSONDecodeError as err:
            raise ValueError(f"the arguments of {name} are not JSON: {err}") from err
    return decoded


def score(sample: Sample, output: list[dict[str, Any]] | str) -> Score:
    """Score a reply as BFCL's evaluation runner does.

    irrelevance: correct when the reply decodes to no call (text, or nothing decodable);
    the other categories: the decoded calls must be in function-calling form and pass
    ``ast_checker`` (order-free for parallel calls)."""
    lib = bfcl()
    try:
        calls = decode(output)
    except ValueError as err:
        if sample.category == "irrelevance":
            return Score(True, None)
        return Score(False, f"Invalid syntax. Failed to decode AST. {err}", "ast_decoder:decoder_failed")
    if sample.category == "irrelevance":
        if lib.is_empty_output(calls):
            return Score(True, None)
        return Score(
            False,
            "Valid syntax. Successfully decode AST when it should not.",
            "irrelevance_error:decoder_success",
        )
    if not lib.is_function_calling_format_output(calls):
        return Score(
            False, "Did not output in the specified format.", "ast_decoder:decoder_wrong_output_format"
        )
    result = lib.ast_checker(
        sample.functions, calls, sample.answer, lib.Language.PYTHON, sample.category, MODEL_NAME
    )
    if result["valid"]:
        return Score(True, None)
    return Score(False, "; ".join(map(str, result["error"])), result.get("error_type"))
