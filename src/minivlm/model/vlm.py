"""MiniVLM: a vision-language model composed of five swappable parts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import math

import torch
from torch import nn

from minivlm.compressors.base import Compressor
from minivlm.encoders.base import VisionEncoder
from minivlm.fusion.base import PreFusion
from minivlm.llms.base import LanguageModel
from minivlm.processing.batch import Batch, LazyPixels
from minivlm.processing.images import normalise_pixels
from minivlm.model import generation, pretrained
from minivlm.model.generation import TokenStreamer
from minivlm.model.decoding import CacheKind
from minivlm.model.packed_linear import pack_linears, unpack_linears
from minivlm.model.weights import DEFAULT_MAX_SHARD_SIZE, empty_parameters, load_weights, save_weights
from minivlm.model.loss import next_token_loss
from minivlm.model.inputs import LLMInputs, splice_layout, splice_media, stitch_tiles
from minivlm.processing.processor import PROCESSOR_FILE, Processor
from minivlm.projectors.base import Projector


class WidthMismatchError(ValueError):
    """Two neighbouring parts disagree on the width of the tensor that passes between them."""


@dataclass
class MiniVLMOutput:
    """`loss` (mean cross-entropy over label tokens, or None without labels), `logits` (B, T, V)
    over the assembled LLM sequence (None when not asked for), the `labels` (B, T) aligned
    with those logits, and the summed loss and number of label tokens behind `loss`."""

    loss: torch.Tensor | None
    logits: torch.Tensor | None
    labels: torch.Tensor | None
    loss_sum: torch.Tensor | None = None
    label_count: torch.Tensor | None = None


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
    and loaded with the model. `frames_per_chunk` bounds how many fusion units (images,
    video frames) are encoded and pre-fused at once, so a long video needs memory for one
    chunk plus K tokens per frame; None processes a batch's units all together.

    Generation calls `prepare_inference` first: in eval mode it makes the float32 CPU linear
    layers multiply through oneDNN-packed copies of their weights (`minivlm.model.packed_linear`:
    faster, at the cost of a second copy of those weights); `train()` undoes it. Set
    `cpu_packed_linears = False` on an instance (or subclass) to keep plain linears (the next
    generation then unpacks any packed before).
    """

    cpu_packed_linears: bool = True

    def __init__(
        self,
        encoder: VisionEncoder,
        compressor: Compressor,
        projector: Projector,
        prefusion: PreFusion,
        llm: LanguageModel,
        vision_tokens: Literal["prefused", "compressed"] = "prefused",
        processor: Processor | None = None,
        frames_per_chunk: int | None = None,
    ) -> None:
        super().__init__()
        if frames_per_chunk is not None and frames_per_chunk < 1:
            raise ValueError(f"frames_per_chunk must be >= 1 or None, got {frames_per_chunk}")
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
        self.frames_per_chunk = frames_per_chunk
        prefusion.attach(llm)

    def save_pretrained(
        self, directory: str | Path, max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, dtype: torch.dtype | None = None
    ) -> list[str]:
        """Writes config.json (each part's class_path and init_args), the weights (model.safetensors,
        or shards of at most `max_shard_size` plus an index, in `dtype` if given) and, when the
        model has a processor, the tokenizer and processor files. Returns the weight file names."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        parts = {name: getattr(self, name) for name in pretrained.PART_NAMES}
        pretrained.write_config(
            directory, parts, {"vision_tokens": self.vision_tokens, "frames_per_chunk": self.frames_per_chunk}
        )
        files = save_weights(self, directory, max_shard_size=max_shard_size, dtype=dtype)
        if self.processor is not None:
            self.processor.save_pretrained(directory)
        return files

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | Path,
        revision: str | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> MiniVLM:
        """Rebuilds a model saved by `save_pretrained` from a local directory or a Hub repo id
        (`revision`: a branch, tag or commit of that repo; files come through the Hub cache).

        Parts are built from their recorded constructor arguments with meta parameters (no
        memory, no random initialisation, no downloads), then each weight is read once with
        safetensors, in `dtype` (None keeps the stored one) onto `device` (default CPU).
        Nothing else in the directory is read: no code, no pickle, no recipe.
        """
        directory = pretrained.resolve_directory(path_or_id, revision)
        config = pretrained.read_config(directory)
        bases = {
            "encoder": VisionEncoder, "compressor": Compressor, "projector": Projector,
            "prefusion": PreFusion, "llm": LanguageModel,
        }
        processor = Processor.from_pretrained(directory) if (directory / PROCESSOR_FILE).is_file() else None
        with empty_parameters():
            parts = {name: pretrained.build_part(config[name], bases[name], name) for name in pretrained.PART_NAMES}
            model = cls(
                **parts,
                vision_tokens=config.get("vision_tokens", "prefused"),
                processor=processor,
                frames_per_chunk=config.get("frames_per_chunk"),
            )
        load_weights(model, directory, dtype=dtype, device=device)
        return model.eval()

    @property
    def tokens_per_image(self) -> int:
        return self.compressor.tokens_for_grid(self.encoder.grid)

    def tokens_per_hd_image(self, tiles: int) -> int:
        gh, gw = self.encoder.grid
        return self.compressor.tokens_for_grid((tiles * gh, tiles * gw))

    def encode_media(self, pixels: torch.Tensor, hd_tiles: int = 1) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Pixels -> (projected vision tokens for pre-fusion, or None when it does not use them;
        projected compressed tokens (U, K, D)).

        With `hd_tiles` n > 1, pixels hold n×n crops + the whole image per item: crop features
        are stitched into one (n·g)² grid that is compressed, and pre-fusion gets
        [stitched ; whole] (LLAVA_MINI.md section 6).
        """
        features = self.encoder(pixels)
        grid = self.encoder.grid
        whole = None
        if hd_tiles > 1:
            features, whole = stitch_tiles(features, grid, hd_tiles)
            grid = (grid[0] * hd_tiles, grid[1] * hd_tiles)
        if self.compressor.placement == "before_projector":
            compressed = self.projector(self.compressor(features, grid).tokens)
            if not self.prefusion.uses_vision:
                return None, compressed
            vision = self.projector(features if whole is None else torch.cat([features, whole], dim=1))
        else:
            vision = self.projector(features if whole is None else torch.cat([features, whole], dim=1))
            compressed = self.compressor(vision[:, : features.shape[1]], grid).tokens
        return (vision if self.prefusion.uses_vision else None), compressed

    def assemble(self, batch: Batch) -> LLMInputs:
        """Builds the LLM's input sequence for `batch`: vision path, pre-fusion, splicing.

        Work is organised in fusion units: one per image, per HD image, per video frame.
        Units of one shape go through encoder, compressor and pre-fusion together, in chunks
        of `frames_per_chunk`; a chunk's pixels are read (decoded, for `LazyPixels`) just
        before it is encoded. A sample's fused text is the mean over its units (video
        frames, or several images) of each unit's fused text. Of a chunk, only each unit's
        K tokens outlive it, copied straight into the LLM input (so a long video's tokens
        exist once, there).
        """
        # Placeholder and padding ids are not vocabulary entries; embed a valid id there and never use it.
        text = self.llm.embed(batch.input_ids.clamp(min=0))
        if batch.pixel_values is None:
            return splice_media(text, batch.input_ids, batch.attention_mask, None, None, batch.labels)
        plan = _plan_units(batch)
        pixels = batch.pixel_values
        if isinstance(pixels, torch.Tensor):
            pixels = pixels.to(self._encoder_weight.device)
        # Each unit's token count (from its grid) fixes the output layout before anything is encoded,
        # so every chunk's tokens go straight to their place in the LLM input.
        unit_tokens = [0] * plan.num_units
        for tiles, units in plan.groups.items():
            for unit in units:
                unit_tokens[unit.index] = self.tokens_per_hd_image(tiles) if tiles > 1 else self.tokens_per_image
        starts = [0]
        for count in unit_tokens:
            starts.append(starts[-1] + count)
        tokens_per_item = torch.tensor(
            [sum(unit_tokens[u] for u in item) for item in plan.items], dtype=torch.long, device=batch.input_ids.device
        )
        layout = splice_layout(batch.input_ids, batch.attention_mask, tokens_per_item, batch.labels)
        embeds = layout.new_embeds(text)
        fused_sum = torch.zeros_like(text)
        fused_count = torch.zeros(text.shape[0], dtype=text.dtype, device=text.device)
        for tiles, units in plan.groups.items():
            for chunk in _chunks(units, self.frames_per_chunk):
                rows = torch.tensor([u.row for u in chunk], device=batch.input_ids.device)
                chunk_tokens, fused_text = self._fuse_chunk(
                    _read_passes(pixels, [p for u in chunk for p in u.passes]),
                    tiles,
                    text[rows],
                    batch.prefusion_mask[rows].to(text.device),
                )
                if chunk_tokens.shape[1] != unit_tokens[chunk[0].index]:
                    raise RuntimeError(
                        f"{type(self.compressor).__name__} gave {chunk_tokens.shape[1]} tokens per unit, "
                        f"its tokens_for_grid says {unit_tokens[chunk[0].index]}"
                    )
                where = torch.tensor([i for u in chunk for i in range(starts[u.index], starts[u.index + 1])])
                layout.place_media(embeds, chunk_tokens.flatten(0, 1), where)
                rows = rows.to(text.device)
                fused_sum = fused_sum.index_add(0, rows, fused_text.to(text.dtype))
                fused_count = fused_count.index_add(0, rows, torch.ones_like(rows, dtype=text.dtype))
        fused = fused_sum / fused_count.clamp(min=1)[:, None, None]
        # Only fused prompt slots of samples with media change; everything else stays bit-exact.
        keep_fused = batch.prefusion_mask.to(text.device) & (fused_count > 0)[:, None]
        layout.place_text(embeds, torch.where(keep_fused[..., None], fused, text))
        return layout.inputs(embeds)

    def _fuse_chunk(
        self, pixels: torch.Tensor, tiles: int, text: torch.Tensor, fuse_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One chunk of units through encoder, compressor and pre-fusion: (the K tokens per unit
        that reach the LLM (U, K, D), each unit's fused text (U, L, D)). Everything else the
        chunk computed is freed on return (at inference; training keeps it for backward)."""
        vision, compressed = self.encode_media(self.encoder_input(pixels), hd_tiles=tiles)
        prefused, fused_text = self.prefusion(
            vision if vision is not None else compressed[:, :0], compressed, text, fuse_mask
        )
        return (prefused if self.vision_tokens == "prefused" else compressed), fused_text

    @property
    def _encoder_weight(self) -> torch.Tensor:
        return next(self.encoder.parameters())

    def encoder_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """Batch pixels as the encoder takes them: uint8 pixels normalised with the encoder's
        mean and std (in float32), on the encoder's device, in its dtype."""
        weight = self._encoder_weight
        return normalise_pixels(pixels.to(weight.device), self.encoder.image_spec, dtype=weight.dtype)

    def forward(self, batch: Batch, return_logits: bool = True) -> MiniVLMOutput:
        """Loss over the label tokens (computed on label positions only, in chunks: see
        `minivlm.model.loss`) and, unless `return_logits` is False, the full logits."""
        inputs = self.assemble(batch)
        hidden, _ = self.llm(inputs.embeds, attention_mask=inputs.attention_mask, hidden_only=True)
        loss = loss_sum = label_count = None
        if inputs.labels is not None:
            loss_sum, label_count = next_token_loss(hidden, self.llm.output_head, inputs.labels, self.llm.vocab_size)
            loss = loss_sum / label_count.clamp(min=1)
        logits = self.llm.output_head(hidden) if return_logits else None
        return MiniVLMOutput(loss=loss, logits=logits, labels=inputs.labels, loss_sum=loss_sum, label_count=label_count)

    def prepare_inference(self) -> None:
        """Packs the linears for CPU inference (see the class docstring); a no-op in train mode.
        With `cpu_packed_linears` False it unpacks any packed before."""
        if not self.cpu_packed_linears:
            unpack_linears(self)
        elif not self.training:
            pack_linears(self)

    def generate(
        self,
        batch: Batch,
        max_new_tokens: int = 32,
        eos_token_id: int | None = None,
        pad_token_id: int = 0,
        temperature: float = 0.0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        streamer: TokenStreamer | None = None,
        cache: CacheKind = "dynamic",
        compile: bool = False,
    ) -> torch.Tensor:
        """New token ids (B, ≤ max_new_tokens) for the prompts of `batch`, with the LLM's KV cache.

        Greedy at `temperature` 0, else sampled (nucleus `top_p`, `generator` for seeding);
        `streamer.put` gets each step's tokens. Only the prompt goes through pre-fusion;
        generated tokens enter the LLM as plain embeddings. After a sample emits
        `eos_token_id` it is padded with `pad_token_id` while the others go on.
        `cache="static"` preallocates the KV cache for the whole call, and `compile=True`
        (static only) runs each decoding step as a `torch.compile`d graph, compiled on the
        first call of each shape: same tokens, faster decoding (`minivlm.model.decoding`).
        In eval mode on CPU, the first call also stores the LLM's wide float32 weights
        column-major, where decoding reads them faster (`minivlm.llms.layout`), and packs the
        float32 linear weights for oneDNN (`prepare_inference`); `train()` undoes both.
        See `minivlm.model.generation.generate` for the per-step logits.
        """
        return generation.generate(
            self, batch, max_new_tokens, eos_token_id, pad_token_id, temperature, top_p, generator, streamer,
            cache=cache, compile=compile,
        ).tokens


@dataclass(frozen=True)
class _Unit:
    """One fusion unit: its position in unit order, its sample row and its encoder passes."""

    index: int
    row: int
    passes: tuple[int, ...]


@dataclass
class _UnitPlan:
    """Units grouped by HD tiling (1 = single pass), and each media item's unit indices."""

    groups: dict[int, list[_Unit]]
    items: list[list[int]]
    num_units: int


def _plan_units(batch: Batch) -> _UnitPlan:
    rows = batch.placeholder_mask.nonzero(as_tuple=True)[0].tolist()
    counts = batch.media_passes.tolist()
    groups: dict[int, list[_Unit]] = {}
    items: list[list[int]] = []
    first = 0
    index = 0
    for m, (kind, count, row) in enumerate(zip(batch.kinds, counts, rows)):
        passes = list(range(first, first + count))
        first += count
        if kind == "hd":
            tiles = math.isqrt(count - 1)
            if tiles < 2 or tiles * tiles + 1 != count:
                raise ValueError(f"media item {m} is 'hd' with {count} passes; HD needs n*n crops + 1 whole image, n >= 2")
            spans = [(tiles, tuple(passes))]
        elif kind == "image" and count != 1:
            raise ValueError(f"media item {m} is an 'image' with {count} encoder passes; an image has 1")
        else:
            spans = [(1, (p,)) for p in passes]
        items.append([])
        for tiles, unit_passes in spans:
            groups.setdefault(tiles, []).append(_Unit(index, row, unit_passes))
            items[-1].append(index)
            index += 1
    return _UnitPlan(groups=groups, items=items, num_units=index)


def _read_passes(pixels: torch.Tensor | LazyPixels, passes: list[int]) -> torch.Tensor:
    """The encoder passes at `passes`: indexed from a tensor, read (decoded) from `LazyPixels`."""
    if isinstance(pixels, torch.Tensor):
        return pixels[torch.tensor(passes, device=pixels.device)]
    return pixels.take(passes)


def _chunks(units: list[_Unit], size: int | None) -> list[list[_Unit]]:
    size = size or len(units)
    return [units[i : i + size] for i in range(0, len(units), size)]
