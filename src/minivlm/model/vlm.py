"""MiniVLM: a vision-language model composed of five swappable parts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from minivlm.compressors.base import Compressor
from minivlm.encoders.base import VisionEncoder
from minivlm.fusion.base import PreFusion
from minivlm.llms.base import LanguageModel
from minivlm.model.batch import IGNORE_INDEX, Batch
from minivlm.model import pretrained
from minivlm.model.inputs import LLMInputs, splice_media, to_left_padding
from minivlm.model.processor import PROCESSOR_FILE, Processor
from minivlm.projectors.base import Projector


class WidthMismatchError(ValueError):
    """Two neighbouring parts disagree on the width of the tensor that passes between them."""


@dataclass
class MiniVLMOutput:
    """`loss` (mean cross-entropy over label tokens, or None without labels), `logits` (B, T, V)
    over the assembled LLM sequence, and the `labels` (B, T) aligned with those logits."""

    loss: torch.Tensor | None
    logits: torch.Tensor
    labels: torch.Tensor | None


def _check_width(left: str, left_dim: int, right: str, right_dim: int) -> None:
    if left_dim != right_dim:
        raise WidthMismatchError(f"{left} produces width {left_dim} but {right} expects width {right_dim}")


class MiniVLM(nn.Module):
    """encoder -> compressor -> projector -> pre-fusion -> LLM, one forward over a `Batch`.

    Every encoder pass is encoded once; its features are compressed to K tokens and
    projected (in the order the compressor's `placement` asks for); each sample's text is
    pre-fused with its image; the K tokens are spliced in at the placeholder; the LLM runs.
    `vision_tokens` picks which K tokens reach the LLM: the pre-fusion outputs at the
    compressed slots ("prefused", the released LLaVA-Mini) or the compressor's own output
    ("compressed", the paper's equations).

    `processor` (optional) is the Processor that builds Batches for this model; it is saved
    and loaded with the model.
    """

    def __init__(
        self,
        encoder: VisionEncoder,
        compressor: Compressor,
        projector: nn.Module,
        prefusion: PreFusion,
        llm: LanguageModel,
        vision_tokens: Literal["prefused", "compressed"] = "prefused",
        processor: Processor | None = None,
    ) -> None:
        super().__init__()
        if vision_tokens not in ("prefused", "compressed"):
            raise ValueError(f"vision_tokens must be 'prefused' or 'compressed', got {vision_tokens!r}")
        encoder_name, compressor_name = type(encoder).__name__, type(compressor).__name__
        projector_name, llm_name = type(projector).__name__, type(llm).__name__
        if compressor.placement == "before_projector":
            _check_width(encoder_name, encoder.feature_dim, compressor_name, compressor.dim)
        else:
            _check_width(projector_name, projector.out_dim, compressor_name, compressor.dim)
        _check_width(encoder_name, encoder.feature_dim, projector_name, projector.in_dim)
        _check_width(projector_name, projector.out_dim, llm_name, llm.hidden_size)
        self.encoder = encoder
        self.compressor = compressor
        self.projector = projector
        self.prefusion = prefusion
        self.llm = llm
        self.vision_tokens = vision_tokens
        self.processor = processor
        prefusion.attach(llm)

    def save_pretrained(self, directory: str | Path) -> None:
        """Writes config.json (each part's class_path and init_args), model.safetensors and,
        when the model has a processor, the tokenizer and processor files."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        parts = {name: getattr(self, name) for name in pretrained.PART_NAMES}
        pretrained.write_config(directory, parts, {"vision_tokens": self.vision_tokens})
        pretrained.save_weights(self, directory)
        if self.processor is not None:
            self.processor.save_pretrained(directory)

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path) -> MiniVLM:
        """Rebuilds a model saved by `save_pretrained` from a local directory or a Hub repo id.

        Parts are built from their recorded constructor arguments (no downloads, since those
        hold configs, not Hub ids), then every weight is loaded strictly with safetensors.
        """
        directory = pretrained.resolve_directory(path_or_id)
        config = pretrained.read_config(directory)
        bases = {
            "encoder": VisionEncoder, "compressor": Compressor, "projector": Projector,
            "prefusion": PreFusion, "llm": LanguageModel,
        }
        parts = {name: pretrained.build_part(config[name], bases[name], name) for name in pretrained.PART_NAMES}
        processor = Processor.from_pretrained(directory) if (directory / PROCESSOR_FILE).is_file() else None
        model = cls(**parts, vision_tokens=config.get("vision_tokens", "prefused"), processor=processor)
        pretrained.load_weights(model, directory)
        return model

    @property
    def tokens_per_image(self) -> int:
        return self.compressor.tokens_for_grid(self.encoder.grid)

    def encode_media(self, pixels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Pixels (P, 3, H, W) -> (projected full features (P, N, D) or None when pre-fusion does
        not use them, projected compressed tokens (P, K, D))."""
        features = self.encoder(pixels)
        grid = self.encoder.grid
        if self.compressor.placement == "before_projector":
            compressed = self.projector(self.compressor(features, grid).tokens)
            vision = self.projector(features) if self.prefusion.uses_vision else None
        else:
            vision = self.projector(features)
            compressed = self.compressor(vision, grid).tokens
        return vision, compressed

    def assemble(self, batch: Batch) -> LLMInputs:
        """Builds the LLM's input sequence for `batch` (vision path, pre-fusion, splicing)."""
        # Placeholder and padding ids are not vocabulary entries; embed a valid id there and never use it.
        text = self.llm.embed(batch.input_ids.clamp(min=0))
        if batch.pixel_values is None:
            return splice_media(text, batch.input_ids, batch.attention_mask, None, None, batch.labels)
        if bool((batch.media_passes != 1).any()):
            raise NotImplementedError("media items of several encoder passes (HD tiles, video) are not supported yet")
        per_sample = batch.placeholder_mask.sum(dim=1)
        if bool((per_sample > 1).any()):
            raise NotImplementedError("several images in one sample are not supported yet")

        vision, compressed = self.encode_media(batch.pixel_values.to(self._pixel_dtype))
        rows = per_sample.nonzero(as_tuple=True)[0]
        fused_tokens, fused_text = self.prefusion(
            vision if vision is not None else compressed[:, :0],
            compressed,
            text[rows],
            batch.prefusion_mask[rows],
        )
        text = text.index_copy(0, rows, fused_text.to(text.dtype))
        tokens = fused_tokens if self.vision_tokens == "prefused" else compressed
        k = tokens.shape[1]
        tokens_per_item = torch.full((tokens.shape[0],), k, dtype=torch.long, device=text.device)
        return splice_media(
            text, batch.input_ids, batch.attention_mask, tokens.reshape(-1, tokens.shape[-1]), tokens_per_item, batch.labels
        )

    @property
    def _pixel_dtype(self) -> torch.dtype:
        return next(self.encoder.parameters()).dtype

    def forward(self, batch: Batch) -> MiniVLMOutput:
        inputs = self.assemble(batch)
        logits, _ = self.llm(inputs.embeds, attention_mask=inputs.attention_mask)
        loss = None
        if inputs.labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), inputs.labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX
            )
        return MiniVLMOutput(loss=loss, logits=logits, labels=inputs.labels)

    @torch.no_grad()
    def generate(
        self, batch: Batch, max_new_tokens: int = 32, eos_token_id: int | None = None, pad_token_id: int = 0
    ) -> torch.Tensor:
        """Greedy decoding with the LLM's KV cache; returns new token ids (B, ≤ max_new_tokens).

        Only the prompt goes through pre-fusion; generated tokens enter the LLM as plain
        embeddings. After a sample emits `eos_token_id` it is padded with `pad_token_id`.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        inputs = self.assemble(batch)
        embeds, mask, positions = to_left_padding(inputs.embeds, inputs.attention_mask)
        logits, cache = self.llm(embeds, attention_mask=mask, position_ids=positions, use_cache=True)
        next_positions = positions[:, -1:] + 1
        finished = torch.zeros(embeds.shape[0], dtype=torch.bool, device=embeds.device)
        generated = []
        for _ in range(max_new_tokens):
            token = logits[:, -1].argmax(dim=-1)
            token = token.masked_fill(finished, pad_token_id)
            generated.append(token)
            if eos_token_id is not None:
                finished |= token == eos_token_id
                if bool(finished.all()):
                    break
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            logits, cache = self.llm(
                self.llm.embed(token[:, None]), attention_mask=mask, position_ids=next_positions, cache=cache, use_cache=True
            )
            next_positions = next_positions + 1
        return torch.stack(generated, dim=1)
