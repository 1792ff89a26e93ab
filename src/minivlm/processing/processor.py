"""Processor: tokenizer + chat template + image transform -> `Batch`."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from minivlm.processing.images import ImageInput, hd_views, image_to_tensor
from minivlm.processing.templates import ChatTemplate, Turn, get_template
from minivlm.processing.video import Video
from minivlm.encoders.base import ImageSpec
from minivlm.processing.batch import IGNORE_INDEX, PLACEHOLDER_ID, Batch, MediaKind

IMAGE_TAG = "<image>"
VIDEO_TAG = "<video>"
_TAGS = re.compile(f"({IMAGE_TAG}|{VIDEO_TAG})")
PROCESSOR_FILE = "processor.json"
Media = ImageInput | Video


@dataclass
class EncodedSample:
    """One tokenised conversation before padding."""

    input_ids: list[int]
    labels: list[int]
    fuse: list[bool]
    tags: list[str] = field(default_factory=list)


class Processor:
    """Turns conversations and images into a `Batch` the model consumes.

    Each `<image>` or `<video>` in a user turn becomes one placeholder id; the model later
    splices `tokens_per_image` tokens there (per frame for a video). With `hd_grid` n > 1
    every image is cut into n×n crops plus the whole image (LLaVA-Mini-HD); videos are
    never tiled. Labels cover assistant answers and their end-of-turn marker only;
    pre-fusion sees every text token except placeholders, padding and answers, in training
    and at inference alike. `answers_in_prefusion="at_inference"` reproduces the released
    LLaVA-Mini instead, whose inference fuses earlier answers of a multi-turn chat (which
    its training never did).
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
    ) -> None:
        if answers_in_prefusion not in ("never", "at_inference"):
            raise ValueError(f"answers_in_prefusion must be 'never' or 'at_inference', got {answers_in_prefusion!r}")
        if hd_grid < 1:
            raise ValueError(f"hd_grid must be >= 1, got {hd_grid}")
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set one (e.g. tokenizer.pad_token = tokenizer.eos_token)")
        self.tokenizer = tokenizer
        self.template = template
        self.image_spec = image_spec
        self.tokens_per_image = tokens_per_image
        self.max_length = max_length
        self.hd_grid = hd_grid
        self.answers_in_prefusion = answers_in_prefusion

    @property
    def eos_token_id(self) -> int:
        """The id that ends an assistant turn (the last token of the template's assistant end)."""
        return self._tokenize(self.template.assistant_end)[-1]

    def _tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def encode(self, turns: list[Turn], add_generation_prompt: bool = False) -> EncodedSample:
        """Token ids, labels and pre-fusion flags for one conversation."""
        ids: list[int] = []
        labels: list[int] = []
        fuse: list[bool] = []
        tags: list[str] = []
        fuse_answers = add_generation_prompt and self.answers_in_prefusion == "at_inference"
        for piece in self.template.render(turns, add_generation_prompt):
            for chunk in _TAGS.split(piece.text):
                if chunk in (IMAGE_TAG, VIDEO_TAG):
                    if piece.train:
                        raise ValueError(f"{chunk} in an assistant turn; media go in user turns")
                    tags.append(chunk)
                    ids.append(PLACEHOLDER_ID)
                    labels.append(IGNORE_INDEX)
                    fuse.append(False)
                    continue
                chunk_ids = self._tokenize(chunk)
                ids += chunk_ids
                labels += chunk_ids if piece.train else [IGNORE_INDEX] * len(chunk_ids)
                fuse += [piece.fuse or fuse_answers] * len(chunk_ids)
        return EncodedSample(ids, labels, fuse, tags)

    def llm_length(self, sample: EncodedSample, media: list[Media] | None = None) -> int:
        """Length of the LLM sequence once each placeholder holds its tokens (K per image, K per frame)."""
        media = media if media is not None else [None] * len(sample.tags)
        units = sum(len(item.frames) if isinstance(item, Video) else 1 for item in media)
        return len(sample.input_ids) - len(sample.tags) + units * self.tokens_per_image

    def media_passes(self, item: Media, tag: str, where: str) -> tuple[MediaKind, list[torch.Tensor]]:
        """The kind of one media item and its encoder passes as normalised (3, S, S) tensors."""
        if tag == VIDEO_TAG:
            if not isinstance(item, Video):
                raise TypeError(f"{where}: {VIDEO_TAG} needs a Video, got {type(item).__name__}")
            return "video", [image_to_tensor(frame, self.image_spec) for frame in item.frames]
        if isinstance(item, Video):
            raise TypeError(f"{where}: {IMAGE_TAG} got a Video; use {VIDEO_TAG} for videos")
        if self.hd_grid == 1:
            return "image", [image_to_tensor(item, self.image_spec)]
        return "hd", [image_to_tensor(view, self.image_spec) for view in hd_views(item, self.hd_grid, self.image_spec.size)]

    def __call__(
        self,
        conversations: list[list[Turn]],
        images: list[list[Media]] | None = None,
        add_generation_prompt: bool = False,
    ) -> Batch:
        """A right-padded `Batch`; `images[i]` are the media of conversation i (images, or
        `Video`s for `<video>` tags), in tag order."""
        images = images if images is not None else [[] for _ in conversations]
        if len(images) != len(conversations):
            raise ValueError(f"{len(conversations)} conversations but {len(images)} media lists")
        samples = []
        pixels: list[torch.Tensor] = []
        passes: list[int] = []
        kinds: list[MediaKind] = []
        for i, (turns, media) in enumerate(zip(conversations, images)):
            sample = self.encode(turns, add_generation_prompt)
            if len(sample.tags) != len(media):
                raise ValueError(f"conversation {i} has {len(sample.tags)} media tags but {len(media)} media items")
            length = self.llm_length(sample, media)
            if self.max_length is not None and length > self.max_length:
                raise ValueError(f"conversation {i} is {length} LLM tokens long, over max_length={self.max_length}")
            for j, (tag, item) in enumerate(zip(sample.tags, media)):
                kind, views = self.media_passes(item, tag, f"conversation {i}, media item {j}")
                kinds.append(kind)
                passes.append(len(views))
                pixels += views
            samples.append(sample)
        return self.collate(samples, pixels, passes, kinds)

    def collate(
        self,
        samples: list[EncodedSample],
        pixels: list[torch.Tensor],
        passes: list[int] | None = None,
        kinds: list[MediaKind] | None = None,
    ) -> Batch:
        """Pads encoded samples on the right and stacks their pixels (one pass per item unless
        `passes` says otherwise)."""
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
            pixel_values=torch.stack(pixels) if pixels else None,
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
        """Writes the tokenizer files and `processor.json` (template name, image spec, token counts)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        config = {
            "template": self.template.name,
            "image_spec": asdict(self.image_spec),
            "tokens_per_image": self.tokens_per_image,
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
            template=get_template(config["template"]),
            image_spec=ImageSpec(size=spec["size"], mean=tuple(spec["mean"]), std=tuple(spec["std"])),
            tokens_per_image=config["tokens_per_image"],
            max_length=config["max_length"],
            hd_grid=config.get("hd_grid", 1),
            answers_in_prefusion=config.get("answers_in_prefusion", "never"),
        )
