"""Processor: tokenizer + chat template + image transform -> `Batch`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from minivlm.data.images import ImageInput, image_to_tensor
from minivlm.data.templates import ChatTemplate, Turn, get_template
from minivlm.encoders.base import ImageSpec
from minivlm.model.batch import IGNORE_INDEX, PLACEHOLDER_ID, Batch

IMAGE_TAG = "<image>"
PROCESSOR_FILE = "processor.json"


@dataclass
class EncodedSample:
    """One tokenised conversation before padding."""

    input_ids: list[int]
    labels: list[int]
    fuse: list[bool]


class Processor:
    """Turns conversations and images into a `Batch` the model consumes.

    Each `<image>` in a user turn becomes one placeholder id; the model later splices
    `tokens_per_image` tokens there. Labels cover assistant answers and their end-of-turn
    marker only; pre-fusion sees every text token except placeholders, padding and answers,
    in training and at inference alike.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        template: ChatTemplate,
        image_spec: ImageSpec,
        tokens_per_image: int,
        max_length: int | None = None,
    ) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set one (e.g. tokenizer.pad_token = tokenizer.eos_token)")
        self.tokenizer = tokenizer
        self.template = template
        self.image_spec = image_spec
        self.tokens_per_image = tokens_per_image
        self.max_length = max_length

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
        for piece in self.template.render(turns, add_generation_prompt):
            for i, chunk in enumerate(piece.text.split(IMAGE_TAG)):
                if i > 0:
                    ids.append(PLACEHOLDER_ID)
                    labels.append(IGNORE_INDEX)
                    fuse.append(False)
                chunk_ids = self._tokenize(chunk)
                ids += chunk_ids
                labels += chunk_ids if piece.train else [IGNORE_INDEX] * len(chunk_ids)
                fuse += [piece.fuse] * len(chunk_ids)
        return EncodedSample(ids, labels, fuse)

    def llm_length(self, sample: EncodedSample) -> int:
        """Length of the LLM sequence once each placeholder holds its image tokens."""
        placeholders = sample.input_ids.count(PLACEHOLDER_ID)
        return len(sample.input_ids) + placeholders * (self.tokens_per_image - 1)

    def __call__(
        self,
        conversations: list[list[Turn]],
        images: list[list[ImageInput]] | None = None,
        add_generation_prompt: bool = False,
    ) -> Batch:
        """A right-padded `Batch`; `images[i]` are the images of conversation i, in `<image>` order."""
        images = images if images is not None else [[] for _ in conversations]
        if len(images) != len(conversations):
            raise ValueError(f"{len(conversations)} conversations but {len(images)} image lists")
        samples = []
        pixels = []
        for i, (turns, sample_images) in enumerate(zip(conversations, images)):
            sample = self.encode(turns, add_generation_prompt)
            tags = sample.input_ids.count(PLACEHOLDER_ID)
            if tags != len(sample_images):
                raise ValueError(f"conversation {i} has {tags} {IMAGE_TAG} tags but {len(sample_images)} images")
            if self.max_length is not None and self.llm_length(sample) > self.max_length:
                raise ValueError(
                    f"conversation {i} is {self.llm_length(sample)} LLM tokens long, over max_length={self.max_length}"
                )
            samples.append(sample)
            pixels += [image_to_tensor(image, self.image_spec) for image in sample_images]
        return self.collate(samples, pixels)

    def collate(self, samples: list[EncodedSample], pixels: list[torch.Tensor]) -> Batch:
        """Pads encoded samples on the right and stacks their pixels."""
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
            media_passes=torch.ones(len(pixels), dtype=torch.long) if pixels else None,
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
        )
