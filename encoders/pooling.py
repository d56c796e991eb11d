"""Token states to one sentence vector: mean, CLS or max pooling, then L2 normalisation.

The mode comes from a sentence-transformers ``1_Pooling/config.json`` when the model
directory has one, so a model is pooled the way it was trained.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, get_args

import torch

PoolingMode = Literal["mean", "cls", "max"]
POOLING_MODES: tuple[PoolingMode, ...] = get_args(PoolingMode)

_CONFIG_KEYS: dict[str, PoolingMode] = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}


def check_pooling(mode: str) -> PoolingMode:
    """Return ``mode`` as a pooling mode, or raise ValueError naming the valid ones."""
    if mode not in POOLING_MODES:
        raise ValueError(f"pooling must be one of {', '.join(POOLING_MODES)}; got {mode!r}")
    return mode


def read_pooling(model_dir: Path) -> PoolingMode:
    """Return the pooling mode in ``model_dir/1_Pooling/config.json``; "mean" when absent."""
    path = model_dir / "1_Pooling" / "config.json"
    if not path.is_file():
        return "mean"
    config = json.loads(path.read_text(encoding="utf-8"))
    enabled = sorted(key for key, on in config.items() if key.startswith("pooling_mode") and on)
    if len(enabled) != 1 or enabled[0] not in _CONFIG_KEYS:
        raise ValueError(
            f"{path} enables pooling {enabled}; only one of {sorted(_CONFIG_KEYS)} is "
            "supported. Pass pooling='mean', 'cls' or 'max' to TextEncoder to override."
        )
    return _CONFIG_KEYS[enabled[0]]


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: PoolingMode) -> torch.Tensor:
    """Return L2-normalised float32 sentence vectors (batch, dim) from token states.

    Padding positions (mask 0) never contribute, so a text's vector does not depend on
    the longest text it was batched with.
    """
    # Pool in float32 even when the model runs in half precision: fp16 keeps ~3 significant
    # digits, and summing up to max_tokens token states would lose them.
    hidden = hidden.float()
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        pooled = hidden[:, 0]
    elif mode == "max":
        pooled = hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
    else:
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2.0, dim=1)
