"""Next-token cross-entropy without the full (B, T, V) logits.

Only positions whose next token is a label ever meet the output head, and they meet it in
chunks of at most `LOGITS_BUDGET` logits; each chunk runs under non-reentrant activation
checkpointing, so its logits are freed after the forward and recomputed in the backward.
Peak memory is then one chunk of logits (plus its fp32 copy), whatever the sequence length
or vocabulary, instead of B·T·V twice. The value is the same cross-entropy: the sum over
label tokens, and their count, so callers can normalise over a whole accumulated batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from minivlm.processing.batch import IGNORE_INDEX

# Logit elements per chunk: 2**24 fp32 values = 64 MiB (128 tokens at a 128 K vocabulary).
LOGITS_BUDGET = 2**24


def _chunk_loss(head: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def label_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) labels -> (mask over the first T-1 positions whose next token is a label, those
    next tokens): position t predicts token t+1."""
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    return mask, targets[mask]


def next_token_loss(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    labels: torch.Tensor,
    vocab_size: int,
    budget: int = LOGITS_BUDGET,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of the label tokens and their number.

    `hidden` (B, T, D) are the LLM's final hidden states, `head` maps (N, D) to (N, V)
    logits (the LLM's output layer), `labels` (B, T) hold IGNORE_INDEX where no loss is
    taken. Returns (sum, count), both 0-dim tensors; `sum / count` is the mean
    cross-entropy that `F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)` gives.
    """
    if budget < 1:
        raise ValueError(f"budget must be >= 1 logit element, got {budget}")
    mask, targets = label_positions(labels)
    selected = hidden[:, :-1][mask]
    count = mask.sum()
    chunk = max(1, budget // vocab_size)
    # A zero that is part of the graph: a micro-batch without labels still backpropagates.
    total = hidden[:, :0].float().sum()
    for start in range(0, selected.shape[0], chunk):
        piece, piece_targets = selected[start : start + chunk], targets[start : start + chunk]
        if torch.is_grad_enabled() and piece.requires_grad:
            total = total + checkpoint(_chunk_loss, head, piece, piece_targets, use_reentrant=False)
        else:
            total = total + _chunk_loss(head, piece, piece_targets)
    return total, count
