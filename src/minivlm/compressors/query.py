"""LLaVA-Mini's query-based compressor, in the paper's and the released code's semantics."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from minivlm.compressors.base import Compressor, CompressorOutput, Placement, check_features, check_placement
from minivlm.compressors.posembed import sincos_2d

Semantics = Literal["paper", "release"]
KeyPE = Literal["native", "resized"]


class QueryCompressor(Compressor):
    """Compresses N features to K = size² tokens with learned queries (LLAVA_MINI.md §3).

    ``semantics="release"`` (the public checkpoint; runs before the projector, width D_v):
    8-head ``nn.MultiheadAttention`` with q = ln_q(query) + PE, k = ln_kv(F) + PE resized
    bicubically from the size×size grid to the input grid, v = ln_kv(F).

    ``semantics="paper"`` (Eq. 2; runs after the projector, width D_llm): one attention
    without projections, norms or scaling, A = softmax((Q + PE_Q)(H + PE_H)ᵀ), Ĥ = A·H,
    with PE_H the sin-cos table on the native input grid.

    Both return the (P, K, N) attention map, head-averaged in release semantics.

    `semantics` picks the attention form and the defaults of the two other choices, which
    can be set apart for ablations: `placement` (before or after the projector) and `key_pe`
    ("resized": the size×size table resized to the input grid, as released; "native": a
    sin-cos table on the input grid itself, as in the paper).
    """

    def __init__(
        self,
        dim: int,
        size: int = 1,
        semantics: Semantics = "release",
        num_heads: int = 8,
        placement: Placement | None = None,
        key_pe: KeyPE | None = None,
    ) -> None:
        super().__init__()
        if semantics not in ("paper", "release"):
            raise ValueError(f"semantics must be 'paper' or 'release', got {semantics!r}")
        if key_pe not in (None, "native", "resized"):
            raise ValueError(f"key_pe must be 'native' or 'resized', got {key_pe!r}")
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        if dim % 4:
            raise ValueError(f"QueryCompressor needs dim divisible by 4 for its 2-D sin-cos table, got {dim}")
        if semantics == "release" and dim % num_heads:
            raise ValueError(f"QueryCompressor needs dim divisible by num_heads, got dim {dim} and {num_heads} heads")
        self.dim = dim
        self.size = size
        self.semantics = semantics
        self.num_heads = num_heads
        default_placement = "before_projector" if semantics == "release" else "after_projector"
        self.placement = check_placement(placement or default_placement)
        self.key_pe: KeyPE = key_pe or ("resized" if semantics == "release" else "native")

        self.query = nn.Parameter(torch.empty(size * size, dim))
        nn.init.normal_(self.query, std=0.02)
        # Persistent so that converted checkpoints, which carry it, load strictly.
        self.register_buffer("pos_embed", sincos_2d(dim, (size, size)), persistent=True)
        # Key tables by (grid, dtype, device): (the pos_embed tensor they came from, its version
        # and storage, the table).
        self._key_pe_cache: dict[tuple, tuple[torch.Tensor, tuple[int, int], torch.Tensor]] = {}
        if semantics == "release":
            self.ln_q = nn.LayerNorm(dim)
            self.ln_kv = nn.LayerNorm(dim)
            self.attn = nn.MultiheadAttention(dim, num_heads, dropout=0.0, bias=True, batch_first=True)

    @property
    def num_tokens(self) -> int:
        return self.size * self.size

    def init_args_for_export(self) -> dict:
        return {
            "dim": self.dim, "size": self.size, "semantics": self.semantics, "num_heads": self.num_heads,
            "placement": self.placement, "key_pe": self.key_pe,
        }

    def key_pos_embed(self, grid: tuple[int, int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The (h·w, dim) table added to the keys, as `key_pe` says.

        Built once per grid, dtype and device rather than on every forward (the bicubic resize
        costs more than the attention of a single query), and again whenever `pos_embed` is
        replaced or changed in place (loading a checkpoint, `.to()`). A constant: no gradient.
        """
        source = self.pos_embed
        if source.is_inference():  # no version counter to tell whether the table changed
            return self._build_key_pos_embed(grid, dtype)
        key = (tuple(grid), dtype, source.device)
        stamp = (source._version, source.data_ptr())
        cached = self._key_pe_cache.get(key)
        if cached is not None and cached[0] is source and cached[1] == stamp:
            return cached[2]
        # Outside inference mode, so a table first built there can still meet autograd later.
        with torch.no_grad(), torch.inference_mode(False):
            table = self._build_key_pos_embed(grid, dtype)
        self._key_pe_cache[key] = (source, stamp, table)
        return table

    def _build_key_pos_embed(self, grid: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        if self.key_pe == "resized":
            return self.resized_pos_embed(grid).to(dtype)
        return sincos_2d(self.dim, grid, dtype).to(self.pos_embed.device)

    def resized_pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        """The size×size table resized bicubically to `grid` (h, w): (h·w, dim), as the release keys get it."""
        c = self.size
        table = self.pos_embed.reshape(1, c, c, self.dim).permute(0, 3, 1, 2)
        resized = F.interpolate(table, size=grid, mode="bicubic", align_corners=False)
        return resized.flatten(2).squeeze(0).transpose(0, 1)

    def forward(self, features: torch.Tensor, grid: tuple[int, int]) -> CompressorOutput:
        check_features(self, features, grid)
        if self.semantics == "release":
            return self._release(features, grid)
        return self._paper(features, grid)

    def _release(self, features: torch.Tensor, grid: tuple[int, int]) -> CompressorOutput:
        kv = self.ln_kv(features)
        key_pe = self.key_pos_embed(grid, kv.dtype)
        q = self.ln_q(self.query) + self.pos_embed.to(self.query.dtype)
        q = q.unsqueeze(0).expand(features.shape[0], -1, -1)
        tokens, attention = self.attn(q, kv + key_pe, kv, need_weights=True, average_attn_weights=True)
        return CompressorOutput(tokens=tokens, attention=attention)

    def _paper(self, features: torch.Tensor, grid: tuple[int, int]) -> CompressorOutput:
        q = self.query + self.pos_embed.to(self.query.dtype)
        keys = features + self.key_pos_embed(grid, features.dtype)
        logits = torch.einsum("kd,pnd->pkn", q.to(features.dtype), keys)
        # Unscaled logits are large; softmax in at least float32 keeps half-precision runs stable.
        attention = logits.softmax(dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))
        attention = attention.to(features.dtype)
        return CompressorOutput(tokens=attention @ features, attention=attention)
