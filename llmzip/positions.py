"""How many tokens a model takes: its position limit, read from its config, checked before a stage runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmzip.errors import ModelError

# Families whose position ids start after the padding index (RoBERTa's convention): 2 fewer usable tokens.
_PADDING_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "longformer", "mpnet", "data2vec-text"}


def max_tokens(config: Any) -> int | None:
    """How many tokens the model's position embeddings can take (None when it has no absolute limit)."""
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int):
        return None
    if getattr(config, "model_type", "") in _PADDING_OFFSET_POSITIONS:
        positions -= int(getattr(config, "pad_token_id", 1) or 1) + 1
    return positions


def check_length(config: Any, length: int, option: str, source: str | Path) -> None:
    """Refuse a sequence length beyond the model's positions before it becomes an index error mid-run."""
    limit = max_tokens(config)
    if limit is not None and length > limit:
        raise ModelError(f"{option} {length} exceeds the {limit} token positions of {source}; use {option} {limit}")
