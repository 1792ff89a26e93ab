"""`minivlm predict` output: every answer written to JSONL with its prompt, a few shown.

A Lightning callback, so any recipe can add it with its own path; the CLI adds one to
`predict` runs that have none. Each line is `{"id", "prompt", "answer"}`, where `id` is
the sample's position in the predict set (batches in order, as the predict loader yields
them) and `prompt` is the prompt text with an `<image>` or `<video>` tag per media item.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from minivlm.processing.batch import PLACEHOLDER_ID, Batch

FILE_NAME = "predictions.jsonl"


def prompt_text(processor: Any, input_ids: list[int], media_tags: list[str]) -> str:
    """Readable prompt of one sample: special tokens kept, each placeholder shown as its media tag."""
    pieces: list[str] = []
    run: list[int] = []
    tags = iter(media_tags)
    for token in input_ids:
        if token == PLACEHOLDER_ID:
            pieces.append(processor.tokenizer.decode(run))
            pieces.append(next(tags, "<image>"))
            run = []
        else:
            run.append(token)
    pieces.append(processor.tokenizer.decode(run))
    return " ".join(piece.strip() for piece in pieces if piece.strip())


class PredictionsWriter(Callback):
    """Writes `path` (default: `predictions.jsonl` in the trainer's log directory) and prints
    the first `show` predictions when predicting ends."""

    def __init__(self, path: str | None = None, show: int = 5) -> None:
        if show < 0:
            raise ValueError(f"show must be >= 0, got {show}")
        self.path = path
        self.show = show
        self.written = 0
        self._shown: list[dict[str, Any]] = []
        self._file = None

    def output_path(self, trainer: L.Trainer) -> Path:
        path = Path(self.path) if self.path is not None else Path(trainer.log_dir or trainer.default_root_dir) / FILE_NAME
        # Each rank predicts its own share of the samples; one file per rank keeps them apart.
        return path if trainer.world_size == 1 else path.with_suffix(f".rank{trainer.global_rank}{path.suffix}")

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = self.output_path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("w")
        self.written = 0
        self._shown = []

    def on_predict_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Batch, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        processor = pl_module.processor
        tags = ["<video>" if kind == "video" else "<image>" for kind in batch.kinds]
        per_row = batch.placeholder_mask.sum(dim=1).tolist()
        for row, answer in enumerate(outputs):
            ids = batch.input_ids[row][batch.attention_mask[row]].tolist()
            first = sum(per_row[:row])
            record = {"id": self.written, "prompt": prompt_text(processor, ids, tags[first : first + per_row[row]]),
                      "answer": answer}
            self._file.write(json.dumps(record) + "\n")
            if len(self._shown) < self.show:
                self._shown.append(record)
            self.written += 1

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._file.close()
        lines = [f"  [{r['id']}] {r['prompt']!r} -> {r['answer']!r}" for r in self._shown]
        rank_zero_info(
            f"wrote {self.written} predictions to {self.output_path(trainer)}"
            + (":\n" + "\n".join(lines) if lines else "")
        )
