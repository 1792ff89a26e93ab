"""Generated LLaVA-style data for the data tests: annotations, images, videos and a Processor."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

import lightning as L
from conftest import VISION, WIDTH, tiny_encoder, tiny_llm_config
from conftest import write_video as write_test_video

from minivlm.compressors import QueryCompressor
from minivlm.data.synthetic import build_shapes_tokenizer
from minivlm.fusion import DecoderPreFusion
from minivlm.llms import HFLanguageModel
from minivlm.projectors import MLPProjector
from minivlm.training.module import MiniVLMModule
from minivlm.training.stages import PARTS, PartStage, Stage
from minivlm.specs import ImageSpec
from minivlm.processing import Processor
from minivlm.processing.templates import get_template

SPEC = ImageSpec(size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def processor(max_length: int | None = None) -> Processor:
    return Processor(build_shapes_tokenizer(), get_template("shapes"), SPEC, tokens_per_image=1, max_length=max_length)


def colour(i: int) -> tuple[int, int, int]:
    """A colour that identifies sample i (so pixels can be traced back to their record)."""
    return (i % 251, (i * 7) % 251, (i * 13) % 251)


def write_image(path: Path, i: int, size: int = 16, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour(i)).save(path, format=fmt)


def write_video(path: Path, frames: int, fps: int = 4, size: int = 16) -> None:
    write_test_video(path, frames, fps=fps, size=size)


def record(i: int, media: str | None = "image", prefix: str = "s") -> dict:
    question = "What colour is the shape at the top left?"
    answer = ("red", "green", "blue", "yellow")[i % 4]
    rec = {"id": f"{prefix}{i:03d}", "conversations": [
        {"from": "human", "value": (f"<{media}>\n" if media else "") + question},
        {"from": "gpt", "value": answer},
    ]}
    if media == "image":
        rec["image"] = f"images/{i:03d}.png"
    elif media == "video":
        rec["video"] = f"videos/{i:03d}.mp4"
    return rec


def make_llava(root: Path, count: int, videos: int = 0, text_only: int = 0, prefix: str = "s") -> Path:
    """`count` records under root (the last `videos` with a video, the `text_only` before them
    without media); writes the media and `root/data.json`, returns the JSON path."""
    records = []
    for i in range(count):
        kind = "video" if i >= count - videos else None if i >= count - videos - text_only else "image"
        records.append(record(i, kind, prefix))
        if kind == "image":
            write_image(root / "images" / f"{i:03d}.png", i)
        elif kind == "video":
            (root / "videos").mkdir(parents=True, exist_ok=True)
            write_video(root / "videos" / f"{i:03d}.mp4", frames=8)
    path = root / "data.json"
    path.write_text(json.dumps(records))
    return path


def tiny_module() -> MiniVLMModule:
    return MiniVLMModule(
        encoder=tiny_encoder(), compressor=QueryCompressor(dim=VISION, size=1, num_heads=4),
        projector=MLPProjector(VISION, WIDTH), prefusion=DecoderPreFusion(num_layers=1),
        llm=HFLanguageModel(config=tiny_llm_config()), max_length=40,
        stage=Stage(**{part: PartStage("full", 1e-3) for part in PARTS}),
    )


def fit(datamodule: L.LightningDataModule, ckpt_path: str | None = None, **kwargs) -> L.Trainer:
    settings = dict(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, accelerator="cpu", devices=1)
    trainer = L.Trainer(**(settings | kwargs))
    trainer.fit(tiny_module(), datamodule=datamodule, ckpt_path=ckpt_path)
    return trainer
