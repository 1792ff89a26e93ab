"""Pixels stay uint8 until the model normalises them, chunk by chunk, with its encoder's spec."""

import dataclasses

import numpy as np
import torch

from conftest import shapes_processor, tiny_vlm
from minivlm.processing.images import image_to_tensor
from minivlm.processing.templates import Turn
from minivlm.processing.video import Video

rng = np.random.default_rng(1)


def picture() -> np.ndarray:
    return rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)


def test_uint8_batches_give_the_logits_of_normalised_float_batches():
    model = tiny_vlm(frames_per_chunk=2).eval()
    processor = shapes_processor(model)
    images = [picture(), picture()]
    frames = Video(tuple(picture() for _ in range(3)))
    conversations = [
        [Turn("user", "<image> Is there a red circle ?"), Turn("assistant", "yes")],
        [Turn("user", "<video> Is there a blue square ?"), Turn("assistant", "no")],
        [Turn("user", "<image> How many red shapes are there ?"), Turn("assistant", "two")],
    ]
    batch = processor(conversations, [[images[0]], [frames], [images[1]]])
    assert batch.pixel_values.dtype == torch.uint8
    spec = model.encoder.image_spec
    normalised = torch.stack([image_to_tensor(x, spec) for x in [images[0], *frames.frames, images[1]]])
    floats = dataclasses.replace(batch, pixel_values=normalised)
    with torch.no_grad():
        assert torch.equal(model(batch).logits, model(floats).logits)
        # Not a no-op: unnormalised pixels would give other logits.
        raw = dataclasses.replace(batch, pixel_values=batch.pixel_values.float())
        assert not torch.allclose(model(batch).logits, model(raw).logits, atol=1e-3)


def test_batch_to_casts_float_pixels_only():
    model = tiny_vlm()
    batch = shapes_processor(model)([[Turn("user", "<image> Is there a red circle ?"), Turn("assistant", "yes")]],
                                    [[picture()]])
    assert batch.to("cpu", torch.bfloat16).pixel_values.dtype == torch.uint8
    floats = dataclasses.replace(batch, pixel_values=batch.pixel_values.float())
    assert floats.to("cpu", torch.bfloat16).pixel_values.dtype == torch.bfloat16
