"""Prompts without a pretrained language model: a small learned embedding of their tokens.

DiffBoost encodes its text description with CLIP's text encoder; nothing can be downloaded here,
so a prompt is split into lower-case word tokens, each token has a learned vector, and the prompt
is their mean (``nn.EmbeddingBag``). Token 0 is the null prompt (an empty bag, embedded as the
zero vector), used when the prompt is dropped for classifier-free guidance; token 1 stands for a
word the vocabulary does not know. This only learns what the dataset's own prompts distinguish
(e.g. "benign" vs "malignant"); it does not understand language (docs/synthesis.md).

Where prompts come from (dataset.json): ``"prompts": {"case_id": "text", ...}`` per case, else
``"prompt": "text"`` for every case, else none.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

NULL, UNKNOWN = 0, 1
MAX_TOKENS = 16  # tokens kept per prompt
_WORD = re.compile(r"[a-z0-9]+")


def tokenize(text: str | None) -> list[str]:
    return _WORD.findall((text or "").lower())[:MAX_TOKENS]


def build_vocabulary(prompts: Iterable[str | None]) -> tuple[str, ...]:
    """Sorted distinct tokens of ``prompts``; index i + 2 in the embedding (0 null, 1 unknown)."""
    return tuple(sorted({tok for text in prompts for tok in tokenize(text)}))


def encode(texts: Sequence[str | None], vocabulary: Sequence[str]) -> Tensor:
    """Prompts -> token ids ``[B, MAX_TOKENS]`` padded with NULL (an absent prompt is all NULL)."""
    index = {tok: i + 2 for i, tok in enumerate(vocabulary)}
    ids = torch.full((len(texts), MAX_TOKENS), NULL, dtype=torch.long)
    for row, text in enumerate(texts):
        tokens = [index.get(tok, UNKNOWN) for tok in tokenize(text)]
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return ids


class PromptEncoder(nn.Module):
    """Token ids ``[B, L]`` -> ``[B, dim]``: the mean of the non-null tokens' vectors (zero for a
    null prompt)."""

    def __init__(self, vocabulary_size: int, dim: int) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(vocabulary_size + 2, dim, mode="mean", padding_idx=NULL)

    def forward(self, ids: Tensor) -> Tensor:
        return self.bag(ids)
