"""What ``chatforge bench`` measures (`BenchOptions`, one field per ``--flag``) and what it
found (`Results`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class BenchOptions:
    """What to measure; every field has a ``--flag``."""

    model: str = "default"
    """The model: 'default' or another embedded model's name (GGUF for llama.cpp, safetensors for
    transformers), or a path."""
    quantize: str | None = None
    """Re-quantize the GGUF (q4_0, iq4_nl, q8_0) for the llama.cpp engines and the plain llama.cpp references."""
    engines: list[str] = field(default_factory=lambda: ["hybrid", "llama.cpp", "transformers"])
    """chatforge engines to measure."""
    references: bool = True
    """Also measure plain transformers generate, plain llama_cpp.Llama and (streams) plain llama.cpp's batch API."""
    runs: int = 3
    """Repetitions of each single-stream measurement (the median is reported)."""
    tokens: int = 128
    """Tokens generated per decode measurement."""
    prefill_tokens: int = 1000
    """Prompt length of the prefill measurement."""
    turns: int = 10
    """Turns of the conversation measurement (0 to skip)."""
    turn_tokens: int = 32
    """Tokens per assistant reply in the conversation measurement."""
    streams: list[int] = field(default_factory=lambda: [1, 4, 16])
    """Concurrent stream counts (empty to skip)."""
    stream_tokens: int = 64
    """Tokens per request in the concurrency measurement."""
    server: bool = True
    """Also run the concurrency measurement through chatforge's HTTP server."""
    threads: int | None = None
    """CPU threads for every engine (default: all cores)."""
    speculative: str | None = None
    """Speculative decoding on the llama.cpp engines: off, ngram (their default) or draft:MODEL."""
    out: str | None = None
    """Write the Markdown report here."""
    plot: str | None = None
    """Write a PNG plot here."""
    json_out: str | None = None
    """Write the raw results as JSON here."""


@dataclass
class Results:
    machine: dict[str, Any] = field(default_factory=dict)
    single: list[dict[str, Any]] = field(default_factory=list)
    prefill: list[dict[str, Any]] = field(default_factory=list)
    turns: dict[str, list[float]] = field(default_factory=dict)  # median TTFT per turn
    turn_ratios: dict[str, list[float]] = field(default_factory=dict)  # each conversation's last/first
    # Per engine, the median prompt length and tokens computed (cache reused) of each turn.
    turn_tokens: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    streams: list[dict[str, Any]] = field(default_factory=list)
