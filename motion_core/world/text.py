"""The world's text encoder: a word vocabulary, learned word and position embeddings and one
transformer layer, trained with the base model. It plays CLIP's part: prompts in, ``(b, tokens, dim)``
embeddings out, fed to the engine exactly as ComfyUI's CONDITIONING would be."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from .scene import COLOURS, MOTION_WORDS

_WORDS = sorted({w for phrase in MOTION_WORDS.values() for w in phrase.split()}
                | set(COLOURS) | set("a person in shirt and trousers by wall".split()))
SPECIAL = ("<pad>", "<bos>", "<eos>")
VOCAB: tuple[str, ...] = SPECIAL + tuple(_WORDS)
MAX_TOKENS = 20


def tokenize(prompts: list[str] | str) -> torch.Tensor:
    """Word ids ``(b, MAX_TOKENS)``: <bos> words <eos> <pad>...; unknown words are an error."""
    if isinstance(prompts, str):
        prompts = [prompts]
    index = {w: i for i, w in enumerate(VOCAB)}
    out = torch.zeros(len(prompts), MAX_TOKENS, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        words = prompt.lower().replace(",", " ").replace(".", " ").split()
        unknown = [w for w in words if w not in index]
        if unknown:
            raise InputError(f"the world's text encoder does not know the word(s) {unknown}; it knows: {' '.join(_WORDS)}")
        if len(words) > MAX_TOKENS - 2:
            raise InputError(f"prompt {prompt!r} has {len(words)} words; the world's text encoder takes at most {MAX_TOKENS - 2}")
        ids = [index["<bos>"]] + [index[w] for w in words] + [index["<eos>"]]
        out[row, : len(ids)] = torch.tensor(ids)
    return out


class WorldTextEncoder(nn.Module):
    def __init__(self, dim: int = 64, heads: int = 4):
        super().__init__()
        self.token = nn.Embedding(len(VOCAB), dim)
        self.position = nn.Embedding(MAX_TOKENS, dim)
        self.layer = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout=0.0, batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.token(ids) + self.position(pos)[None]
        return self.norm(self.layer(x))

    @torch.no_grad()
    def encode(self, prompts: list[str] | str) -> torch.Tensor:
        """Embeddings ``(b, MAX_TOKENS, dim)`` of the prompts ("" is the unconditional prompt)."""
        return self(tokenize(prompts).to(self.token.weight.device)).float()
