"""Engines: stream tokens for a prompt. ``transformers`` is the reference implementation."""

from chatforge.engines.base import (
    Chunk,
    Engine,
    EngineError,
    GenerationStats,
    KVState,
    PromptTooLongError,
    SamplingParams,
)

__all__ = [
    "Chunk",
    "Engine",
    "EngineError",
    "GenerationStats",
    "KVState",
    "PromptTooLongError",
    "SamplingParams",
]
