"""Tiny random models built from configs: no weights, no network."""

from __future__ import annotations

import os

# Tests never touch the network: any accidental Hub lookup fails at once instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from minivlm.compressors import QueryCompressor
from minivlm.data.synthetic import build_shapes_tokenizer
from minivlm.processing.templates import get_template
from minivlm.encoders import HFVisionEncoder
from minivlm.fusion import DecoderPreFusion
from minivlm.llms import HFLanguageModel
from minivlm.model import MiniVLM
from minivlm.processing import Processor
from minivlm.projectors import MLPProjector

VISION = 32
WIDTH = 48


def tiny_encoder(**kwargs) -> HFVisionEncoder:
    config = dict(
        model_type="clip_vision_model", hidden_size=VISION, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, image_size=32, patch_size=8,
    )
    return HFVisionEncoder(config=config, **kwargs)


def tiny_llm_config(**overrides) -> dict:
    return dict(
        model_type="llama", vocab_size=64, hidden_size=WIDTH, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    ) | overrides


def tiny_vlm(prefusion=None, compressor=None, seed: int = 0, **kwargs) -> MiniVLM:
    torch.manual_seed(seed)
    return MiniVLM(
        encoder=tiny_encoder(),
        compressor=compressor or QueryCompressor(dim=VISION, size=1, num_heads=4),
        projector=MLPProjector(VISION, WIDTH),
        prefusion=prefusion or DecoderPreFusion(num_layers=1),
        llm=HFLanguageModel(config=tiny_llm_config()),
        **kwargs,
    )


def shapes_processor(model: MiniVLM) -> Processor:
    return Processor(build_shapes_tokenizer(), get_template("shapes"), model.encoder.image_spec, model.tokens_per_image)


@pytest.fixture
def vlm() -> MiniVLM:
    return tiny_vlm()


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    """The directory of a 2-step `minivlm fit` of the tiny recipe (checkpoints/last.ckpt, config.yaml),
    shared by the export, push and docs tests."""
    from pathlib import Path

    from minivlm.cli import main

    root = tmp_path_factory.mktemp("run")
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "tiny-shapes.yaml"
    main(["fit", "--config", str(recipe), "--trainer.max_steps=2", "--trainer.val_check_interval=2",
          "--data.init_args.val_size=4", "--data.init_args.batch_size=4", "--trainer.logger=false",
          "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
          f"--trainer.default_root_dir={root}"])
    return root


def write_video(path, frames: int, fps: int = 4, size: int = 32, step: int = 10) -> None:
    """An mpeg4 file whose frame i is a flat grey of value step·i, so sampled indices can be read back."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = np.full((size, size, 3), step * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
