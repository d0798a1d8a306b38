"""The transformers output classes, with the same names and fields (`out.logits`, `out["logits"]`, `out[0]`)."""

from __future__ import annotations

import dataclasses

import numpy as np


class ModelOutput:
    """Fields by attribute (`out.logits`), by key (`out["logits"]`) or as a tuple of the non-None fields."""

    def __getitem__(self, key):
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, k) for k in self.keys())


@dataclasses.dataclass
class BaseModelOutputWithPoolingAndNoAttention(ModelOutput):
    last_hidden_state: np.ndarray = None          # (N, C, h, w)
    pooler_output: np.ndarray | None = None       # (N, C)
    hidden_states: tuple[np.ndarray, ...] | None = None


@dataclasses.dataclass
class ImageClassifierOutputWithNoAttention(ModelOutput):
    loss: None = None                             # inference only: always None
    logits: np.ndarray = None                     # (N, num_labels)
    hidden_states: tuple[np.ndarray, ...] | None = None


@dataclasses.dataclass
class SemanticSegmenterOutput(ModelOutput):
    loss: None = None
    logits: np.ndarray = None                     # (N, num_labels, h, w): at the feature map's resolution
    hidden_states: tuple[np.ndarray, ...] | None = None
    attentions: None = None
