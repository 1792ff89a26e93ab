"""The LightningModule that trains a MiniVLM. It wraps the model; it does not subclass it."""

from __future__ import annotations

import math
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from minivlm.compressors.base import Compressor
from minivlm.data.synthetic import build_shapes_tokenizer
from minivlm.processing.templates import get_template
from minivlm.encoders.base import VisionEncoder
from minivlm.eval.metrics import ExactMatch
from minivlm.fusion.base import PreFusion
from minivlm.llms.base import LanguageModel
from minivlm.processing.batch import Batch
from minivlm.processing.processor import Processor
from minivlm.model.vlm import MiniVLM
from minivlm.projectors.base import Projector

Part = Literal["encoder", "compressor", "projector", "prefusion", "llm"]
PARTS: tuple[Part, ...] = ("encoder", "compressor", "projector", "prefusion", "llm")

# Tokenizers that ship with minivlm, by exact name; anything else is a Hub id or a local path.
BUILTIN_TOKENIZERS = {"shapes": build_shapes_tokenizer}


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """A built-in tokenizer by exact name, else `AutoTokenizer.from_pretrained(name_or_path)`."""
    if name_or_path in BUILTIN_TOKENIZERS:
        return BUILTIN_TOKENIZERS[name_or_path]()
    return AutoTokenizer.from_pretrained(name_or_path)


class MiniVLMModule(L.LightningModule):
    """Trains a MiniVLM built from five parts named by `class_path` in the recipe.

    `train` lists the parts that learn; the others are frozen (and the encoder then runs
    under no_grad). `hd_grid` n > 1 makes every image n×n crops + the whole image
    (LLaVA-Mini-HD); `frames_per_chunk` bounds how many images or frames are encoded and
    pre-fused at once. What trains is logged at the start of fitting. AdamW with linear warmup
    over `warmup_ratio` of the steps, then cosine decay to zero.
    """

    def __init__(
        self,
        encoder: VisionEncoder,
        compressor: Compressor,
        projector: Projector,
        prefusion: PreFusion,
        llm: LanguageModel,
        tokenizer: str = "shapes",
        template: str = "shapes",
        train: list[Part] | None = None,
        vision_tokens: Literal["prefused", "compressed"] = "prefused",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.03,
        max_length: int | None = None,
        max_new_tokens: int = 16,
        hd_grid: int = 1,
        frames_per_chunk: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["encoder", "compressor", "projector", "prefusion", "llm"])
        self.model = MiniVLM(
            encoder, compressor, projector, prefusion, llm, vision_tokens=vision_tokens, frames_per_chunk=frames_per_chunk
        )
        loaded = load_tokenizer(tokenizer)
        if len(loaded) > llm.vocab_size:
            raise ValueError(
                f"tokenizer {tokenizer!r} has {len(loaded)} tokens but the LLM's vocabulary holds {llm.vocab_size}"
            )
        tokens_per_image = self.model.tokens_per_image if hd_grid == 1 else self.model.tokens_per_hd_image(hd_grid)
        self.processor = Processor(
            loaded, get_template(template), encoder.image_spec, tokens_per_image, max_length, hd_grid=hd_grid,
            tokens_per_frame=self.model.tokens_per_image,
        )
        self.model.processor = self.processor
        self.train_parts = list(PARTS[1:] if train is None else train)
        unknown = set(self.train_parts) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown parts in `train`: {sorted(unknown)}; parts are {', '.join(PARTS)}")
        for part in PARTS:
            getattr(self.model, part).requires_grad_(part in self.train_parts)
        self.model.encoder.trainable = "encoder" in self.train_parts
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_ratio = warmup_ratio
        self.max_new_tokens = max_new_tokens
        self.val_exact_match = ExactMatch()
        self.test_exact_match = ExactMatch()

    def on_fit_start(self) -> None:
        lines = []
        for part in PARTS:
            count = sum(p.numel() for p in getattr(self.model, part).parameters())
            state = "trained" if part in self.train_parts else "frozen"
            lines.append(f"  {part:<10} {type(getattr(self.model, part)).__name__:<22} {count:>12,} params  {state}")
        rank_zero_info("minivlm parts:\n" + "\n".join(lines))

    def forward(self, batch: Batch):
        return self.model(batch)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = self.model(batch).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=batch.batch_size)
        return loss

    def _evaluate(self, batch: Batch, stage: str, metric: ExactMatch) -> None:
        out = self.model(batch)
        metric.update(out.logits, out.labels)
        self.log(f"{stage}/loss", out.loss, prog_bar=True, batch_size=batch.batch_size, sync_dist=True)
        self.log(f"{stage}/exact_match", metric, prog_bar=True, batch_size=batch.batch_size)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_exact_match)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_exact_match)

    def predict_step(self, batch: Batch, batch_idx: int) -> list[str]:
        """Greedy answers to the prompts of `batch` (a batch built with add_generation_prompt)."""
        tokens = self.model.generate(
            batch,
            max_new_tokens=self.max_new_tokens,
            eos_token_id=self.processor.eos_token_id,
            pad_token_id=self.processor.tokenizer.pad_token_id,
        )
        return [self.processor.decode(row) for row in tokens]

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking and self.val_exact_match.total > 0:
            rank_zero_info(
                f"step {self.global_step}: validation exact match {float(self.val_exact_match.compute()):.3f} "
                f"over {int(self.val_exact_match.total)} samples"
            )

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("nothing to train: `train` selects no part with parameters")
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(self.warmup_ratio * total)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
