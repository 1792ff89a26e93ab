"""Processor: tokenizer + chat template + image transform -> `Batch`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from minivlm.processing.batch import IGNORE_INDEX, PLACEHOLDER_ID, Batch, LazyPixels, MediaKind
from minivlm.processing.images import SQUARE_MODES, ImageInput, SquareMode, hd_views, image_to_pixels, to_pixels
from minivlm.processing.templates import ChatTemplate, Turn, split_media_tags, template_from_dict
from minivlm.processing.video import Video, VideoFile, VideoFrames
from minivlm.specs import ImageSpec

IMAGE_TAG = "<image>"
VIDEO_TAG = "<video>"
PROCESSOR_FILE = "processor.json"
Media = ImageInput | Video | VideoFile
VIDEOS = (Video, VideoFile)
# One sample's encoder passes: a (3, S, S) uint8 tensor is one pass, `VideoFrames` are len() passes.
Passes = torch.Tensor | VideoFrames


class SampleError(ValueError):
    """A sample that cannot be used as it is. `reason` is a short snake_case word the data
    pipeline counts skipped samples by (e.g. "too_long", "placeholder_mismatch")."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class EncodedSample:
    """One tokenised conversation before padding."""

    input_ids: list[int]
    labels: list[int]
    fuse: list[bool]
    tags: list[str] = field(default_factory=list)


@dataclass
class PreparedSample:
    """A sample ready to collate: its tokens, and its media as encoder passes (a (3, S, S)
    tensor per pass, or a video file's `VideoFrames`, decoded only when the model reads them)."""

    encoded: EncodedSample
    pixels: list[Passes]
    passes: list[int]
    kinds: list[MediaKind]


def stack_passes(pixels: list[Passes]) -> torch.Tensor | LazyPixels | None:
    """One (P, 3, S, S) tensor when every pass is in memory; otherwise `LazyPixels`, with each
    run of in-memory passes stacked into one segment."""
    if not pixels:
        return None
    if all(isinstance(p, torch.Tensor) for p in pixels):
        return torch.stack(pixels)
    segments: list[torch.Tensor | VideoFrames] = []
    run: list[torch.Tensor] = []
    for p in pixels:
        if isinstance(p, torch.Tensor):
            run.append(p)
            continue
        if run:
            segments.append(torch.stack(run))
            run = []
        segments.append(p)
    if run:
        segments.append(torch.stack(run))
    return LazyPixels(segments)


class Processor:
    """Turns conversations and media into a `Batch` the model consumes.

    Each `<image>` or `<video>` in a user turn becomes one placeholder id; the model later
    splices `tokens_per_image` tokens there (`tokens_per_frame` per video frame). With
    `hd_grid` n > 1 every image is cut into n×n crops plus the whole image (LLaVA-Mini-HD);
    videos are never tiled. A `VideoFile` (`open_video`) is not decoded here: its frames reach
    the `Batch` as `LazyPixels` and are decoded while the model encodes them. `square` says how a non-square image is made square (`pad` with
    the mean colour as LLaVA-1.5, `crop` as CLIP, or `resize`). Labels cover assistant
    answers and their end-of-turn marker only; pre-fusion sees every text token except
    placeholders, padding and answers, in training and at inference alike.
    `answers_in_prefusion="at_inference"` reproduces the released LLaVA-Mini instead, whose
    inference fuses earlier answers of a multi-turn chat (which its training never did).
    `max_length` bounds the LLM sequence after media expansion (see `fit_length`).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        template: ChatTemplate,
        image_spec: ImageSpec,
        tokens_per_image: int,
        max_length: int | None = None,
        hd_grid: int = 1,
        answers_in_prefusion: Literal["never", "at_inference"] = "never",
        tokens_per_frame: int | None = None,
        square: SquareMode = "resize",
    ) -> None:
        if answers_in_prefusion not in ("never", "at_inference"):
            raise ValueError(f"answers_in_prefusion must be 'never' or 'at_inference', got {answers_in_prefusion!r}")
        if hd_grid < 1:
            raise ValueError(f"hd_grid must be >= 1, got {hd_grid}")
        if square not in SQUARE_MODES:
            raise ValueError(f"square must be one of {', '.join(SQUARE_MODES)}, got {square!r}")
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set one (e.g. tokenizer.pad_token = tokenizer.eos_token)")
        if not tokenizer.is_fast:
            # Labels come from character offsets, which only fast (Rust) tokenizers report.
            raise ValueError(f"{type(tokenizer).__name__} is a slow tokenizer; minivlm needs a fast one (use_fast=True)")
        self.tokenizer = tokenizer
        self.template = template
        self.image_spec = image_spec
        self.tokens_per_image = tokens_per_image
        # With HD, tokens_per_image counts an HD image and says nothing about video frames.
        self.tokens_per_frame = tokens_per_image if tokens_per_frame is None and hd_grid == 1 else tokens_per_frame
        self.max_length = max_length
        self.hd_grid = hd_grid
        self.answers_in_prefusion = answers_in_prefusion
        self.square = square

    @cached_property
    def eos_token_id(self) -> int:
        """The id that ends an assistant turn (the last token of the template's end-of-turn text)."""
        return self.tokenizer(self.template.end_of_turn, add_special_tokens=False)["input_ids"][-1]

    def encode(self, turns: list[Turn], add_generation_prompt: bool = False) -> EncodedSample:
        """Token ids, labels and pre-fusion flags for one conversation.

        The template renders the whole conversation to one string; each stretch of text
        between media tags is tokenised in one call (as LLaVA does around its image token),
        and a token is trained when its last character lies in a trained span of the
        rendering. So the ids are exactly those of tokenising the rendered text.
        """
        rendered = self.template.render(turns, add_generation_prompt)
        trained = np.zeros(len(rendered.text) + 1, dtype=bool)
        for start, end in rendered.trained:
            trained[start:end] = True
        fuse_answers = add_generation_prompt and self.answers_in_prefusion == "at_inference"
        ids: list[int] = []
        labels: list[int] = []
        fuse: list[bool] = []
        tags: list[str] = []
        offset = 0
        for chunk in split_media_tags(rendered.text):
            if chunk in (IMAGE_TAG, VIDEO_TAG):
                tags.append(chunk)
                ids.append(PLACEHOLDER_ID)
                labels.append(IGNORE_INDEX)
                fuse.append(False)
            else:
                encoding = self.tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True)
                chunk_ids = encoding["input_ids"]
                last_chars = [offset + max(start, end - 1) for start, end in encoding["offset_mapping"]]
                is_trained = trained[last_chars].tolist() if chunk_ids else []
                ids += chunk_ids
                labels += [t if train else IGNORE_INDEX for t, train in zip(chunk_ids, is_trained)]
                fuse += [fuse_answers or not train for train in is_trained]
            offset += len(chunk)
        return EncodedSample(ids, labels, fuse, tags)

    def llm_length(self, sample: EncodedSample, media: list[Media] | None = None) -> int:
        """Length of the LLM sequence once each placeholder holds its tokens: `tokens_per_image`
        per image (an HD image's count when `hd_grid` > 1), `tokens_per_frame` per video frame."""
        media = media if media is not None else [None] * len(sample.tags)
        if self.tokens_per_frame is None and any(isinstance(item, VIDEOS) for item in media):
            raise ValueError("this processor has hd_grid > 1 and no tokens_per_frame, so it cannot count video tokens")
        vision = sum(
            self.tokens_per_image if not isinstance(item, VIDEOS)
            else len(item) * self.tokens_per_frame if isinstance(item, VideoFile)
            else len(item.frames) * self.tokens_per_frame
            for item in media
        )
        return len(sample.input_ids) - len(sample.tags) + vision

    def fit_length(self, sample: EncodedSample, media: list[Media], add_generation_prompt: bool = False) -> EncodedSample:
        """`sample` cut at the end to `max_length` LLM tokens. A sample that would lose a media
        item or every answer token, or a prompt (which cannot be cut), raises `SampleError("too_long")`."""
        if self.max_length is None:
            return sample
        length = self.llm_length(sample, media)
        excess = length - self.max_length
        if excess <= 0:
            return sample
        over = f"{length} LLM tokens, over max_length={self.max_length}"
        if add_generation_prompt:
            raise SampleError("too_long", f"the prompt is {over}")
        keep = len(sample.input_ids) - excess
        if keep <= 0 or PLACEHOLDER_ID in sample.input_ids[keep:]:
            raise SampleError("too_long", f"the sample is {over}, and cutting it would cut a media item")
        if all(label == IGNORE_INDEX for label in sample.labels[:keep]):
            raise SampleError("too_long", f"the sample is {over}, and cutting it would remove every answer")
        return EncodedSample(sample.input_ids[:keep], sample.labels[:keep], sample.fuse[:keep], sample.tags)

    def media_passes(self, item: Media, tag: str, where: str) -> tuple[MediaKind, list[torch.Tensor] | VideoFrames]:
        """The kind of one media item and its encoder passes as (3, S, S) uint8 tensors (the
        model normalises them with its encoder's mean and std, chunk by chunk), or for a
        `VideoFile` its `VideoFrames`, not decoded yet."""
        if tag == VIDEO_TAG:
            if isinstance(item, VideoFile):
                return "video", VideoFrames(item, self.image_spec, self.square)
            if not isinstance(item, Video):
                raise TypeError(f"{where}: {VIDEO_TAG} needs a Video or VideoFile, got {type(item).__name__}")
            return "video", [image_to_pixels(frame, self.image_spec, self.square) for frame in item.frames]
        if isinstance(item, VIDEOS):
            raise TypeError(f"{where}: {IMAGE_TAG} got a {type(item).__name__}; use {VIDEO_TAG} for videos")
        if self.hd_grid == 1:
            return "image", [image_to_pixels(item, self.image_spec, self.square)]
        return "hd", [to_pixels(view) for view in hd_views(item, self.hd_grid, self.image_spec, self.square)]

    def prepare(self, turns: list[Turn], media: list[Media], add_generation_prompt: bool = False) -> PreparedSample:
        """One sample, tokenised, fitted to `max_length` and with its media transformed.

        Anything that makes the sample unusable raises `SampleError` with a reason: a
        malformed conversation ("bad_conversation"), tags that do not match the media
        ("placeholder_mismatch"), an image that cannot be read ("unreadable_image"), or a
        sample over `max_length` that cannot be cut ("too_long").
        """
        try:
            sample = self.encode(turns, add_generation_prompt)
        except ValueError as error:
            raise SampleError("bad_conversation", str(error)) from error
        if len(sample.tags) != len(media):
            raise SampleError(
                "placeholder_mismatch", f"{len(sample.tags)} media tags in the text but {len(media)} media items"
            )
        sample = self.fit_length(sample, media, add_generation_prompt)
        pixels: list[Passes] = []
        passes: list[int] = []
        kinds: list[MediaKind] = []
        for j, (tag, item) in enumerate(zip(sample.tags, media)):
            try:
                kind, views = self.media_passes(item, tag, f"media item {j}")
            except TypeError as error:
                raise SampleError("placeholder_mismatch", str(error)) from error
            except OSError as error:  # PIL: unidentified or truncated image files
                raise SampleError("unreadable_image", f"media item {j}: {error}") from error
            kinds.append(kind)
            passes.append(len(views))
            if isinstance(views, VideoFrames):
                pixels.append(views)
            else:
                pixels += views
        return PreparedSample(sample, pixels, passes, kinds)

    def __call__(
        self,
        conversations: list[list[Turn]],
        images: list[list[Media]] | None = None,
        add_generation_prompt: bool = False,
    ) -> Batch:
        """A right-padded `Batch`; `images[i]` are the media of conversation i (images, or
        `Video`s or `VideoFile`s for `<video>` tags), in tag order. A sample that cannot be used raises
        `SampleError` naming its conversation."""
        images = images if images is not None else [[] for _ in conversations]
        if len(images) != len(conversations):
            raise ValueError(f"{len(conversations)} conversations but {len(images)} media lists")
        prepared = []
        for i, (turns, media) in enumerate(zip(conversations, images)):
            try:
                prepared.append(self.prepare(turns, media, add_generation_prompt))
            except SampleError as error:
                raise SampleError(error.reason, f"conversation {i}: {error}") from error
        return self.collate_prepared(prepared)

    def collate_prepared(self, samples: list[PreparedSample]) -> Batch:
        """Pads prepared samples into one `Batch`."""
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        return self.collate(
            [s.encoded for s in samples],
            [p for s in samples for p in s.pixels],
            [n for s in samples for n in s.passes],
            [k for s in samples for k in s.kinds],
        )

    def collate(
        self,
        samples: list[EncodedSample],
        pixels: list[Passes],
        passes: list[int] | None = None,
        kinds: list[MediaKind] | None = None,
    ) -> Batch:
        """Pads encoded samples on the right and stacks their pixels (one pass per item unless
        `passes` says otherwise). With a video file among them, pixels become `LazyPixels`."""
        length = max(len(s.input_ids) for s in samples)
        pad = self.tokenizer.pad_token_id

        def padded(values: list, fill: Any, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values + [fill] * (length - len(values)), dtype=dtype)

        input_ids = torch.stack([padded(s.input_ids, pad, torch.long) for s in samples])
        return Batch(
            input_ids=input_ids,
            attention_mask=torch.stack([padded([True] * len(s.input_ids), False, torch.bool) for s in samples]),
            labels=torch.stack([padded(s.labels, IGNORE_INDEX, torch.long) for s in samples]),
            prefusion_mask=torch.stack([padded(s.fuse, False, torch.bool) for s in samples]),
            pixel_values=stack_passes(pixels),
            media_passes=torch.tensor(passes if passes is not None else [1] * len(pixels)) if pixels else None,
            media_kinds=tuple(kinds) if kinds else None,
        )

    def decode(self, token_ids: torch.Tensor | list[int]) -> str:
        """Text of generated ids, stopping at the end-of-turn token."""
        ids = token_ids.tolist() if isinstance(token_ids, torch.Tensor) else list(token_ids)
        if self.eos_token_id in ids:
            ids = ids[: ids.index(self.eos_token_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def save_pretrained(self, directory: str | Path) -> None:
        """Writes the tokenizer files and `processor.json` (the chat template itself, the image
        spec and transform, token counts, options)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        config = {
            "template": self.template.to_dict(),
            "image_spec": asdict(self.image_spec),
            "square": self.square,
            "tokens_per_image": self.tokens_per_image,
            "tokens_per_frame": self.tokens_per_frame,
            "max_length": self.max_length,
            "hd_grid": self.hd_grid,
            "answers_in_prefusion": self.answers_in_prefusion,
        }
        (directory / PROCESSOR_FILE).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Processor:
        """Rebuilds a processor saved by `save_pretrained`."""
        directory = Path(directory)
        config = json.loads((directory / PROCESSOR_FILE).read_text())
        spec = config["image_spec"]
        return cls(
            tokenizer=AutoTokenizer.from_pretrained(directory),
            template=template_from_dict(config["template"]),
            image_spec=ImageSpec(size=spec["size"], mean=tuple(spec["mean"]), std=tuple(spec["std"])),
            tokens_per_image=config["tokens_per_image"],
            max_length=config["max_length"],
            hd_grid=config.get("hd_grid", 1),
            answers_in_prefusion=config.get("answers_in_prefusion", "never"),
            tokens_per_frame=config.get("tokens_per_frame"),
            square=config.get("square", "resize"),
        )
