"""Schema-constrained decoding: tool calls, required calls and JSON replies valid by
construction on the local engines (llama.cpp, hybrid, transformers), with llguidance as
the grammar engine. :mod:`grammars` says what a reply may be; :mod:`matcher` applies it to
sampling (docs/serving.md, "Constrained decoding")."""

from chatforge.constrain.grammars import (
    GrammarError,
    call_schema,
    check_grammar,
    check_schema,
    check_tools,
    json_grammar,
    tighten,
    tool_grammar,
)

__all__ = [
    "GrammarError",
    "call_schema",
    "check_grammar",
    "check_schema",
    "check_tools",
    "json_grammar",
    "tighten",
    "tool_grammar",
]
