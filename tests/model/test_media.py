"""HD tiles, video frames, several images and text-only samples in one model."""

import numpy as np
import pytest
import torch

from conftest import WIDTH, shapes_processor, tiny_vlm
from minivlm.compressors import QueryCompressor
from minivlm.processing.processor import SampleError
from minivlm.processing.images import hd_views, image_to_tensor, normalise_pixels, to_pixels
from minivlm.specs import ImageSpec
from minivlm.processing.templates import Turn
from minivlm.processing.video import Video
from minivlm.encoders import HFVisionEncoder
from minivlm.fusion import DecoderPreFusion
from minivlm.llms import HFLanguageModel
from minivlm.model import MiniVLM
from minivlm.processing.processor import Processor
from minivlm.projectors import MLPProjector

rng = np.random.default_rng(0)


def picture(size: int = 32) -> np.ndarray:
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def video(frames: int) -> Video:
    return Video(tuple(picture() for _ in range(frames)))


ANSWER = Turn("assistant", "yes")


def ask(tags: str) -> list[Turn]:
    return [Turn("user", f"{tags} Is there a red circle ?"), ANSWER]


def record_prefusion(model: MiniVLM) -> list[tuple[int, int, int]]:
    """Records (vision, compressed, text) lengths of every pre-fusion call."""
    calls = []
    model.prefusion.register_forward_hook(lambda m, args, out: calls.append(tuple(a.shape[1] for a in args[:3])))
    return calls


def test_hd_at_the_papers_shapes_on_the_meta_device():
    """LLaVA-Mini-HD at full size (CLIP ViT-L/14-336, Vicuna-7B-shaped Llama, 4 pre-fusion
    layers), built on the meta device: a 672 px image as 2×2 crops + the whole image, C = 8.
    64 tokens reach the LLM; pre-fusion sees 2304 + 576 + 64 + L positions."""
    with torch.device("meta"):
        encoder = HFVisionEncoder(config=dict(
            model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
            num_attention_heads=16, image_size=336, patch_size=14,
        ))
        llm = HFLanguageModel(config=dict(
            model_type="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
        ))
        model = MiniVLM(encoder, QueryCompressor(1024, size=8), MLPProjector(1024, 4096), DecoderPreFusion(4), llm)
    shapes = shapes_processor(tiny_vlm())
    processor = Processor(shapes.tokenizer, shapes.template, encoder.image_spec, model.tokens_per_hd_image(2), hd_grid=2)
    batch = processor([ask("<image>")], [[picture(672)]])
    assert batch.pixel_values.shape == (5, 3, 336, 336) and batch.kinds == ("hd",)
    calls = record_prefusion(model)
    inputs = model.assemble(batch)  # the batch stays on the CPU: token bookkeeping runs for real
    text_len = batch.input_ids.shape[1]
    assert calls == [(2304 + 576, 64, text_len)]
    assert int(inputs.media_mask.sum()) == 64
    assert inputs.embeds.shape == (1, text_len - 1 + 64, 4096) and inputs.embeds.is_meta


def test_hd_views_are_row_major_crops_then_the_whole_image():
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[:32, 32:] = 255  # top-right quarter white
    views = hd_views(image, 2, ImageSpec(32, (0.5,) * 3, (0.5,) * 3))
    means = [np.asarray(v).mean() for v in views]
    assert means[:4] == [0, 255, 0, 0]
    assert 60 < means[4] < 70


def test_video_of_m_frames_gives_m_times_k_tokens_in_time_order():
    model = tiny_vlm(vision_tokens="compressed").eval()
    processor = shapes_processor(model)
    clip = video(5)
    batch = processor([ask("<video>")], [[clip]])
    assert batch.kinds == ("video",) and batch.media_passes.tolist() == [5]
    with torch.no_grad():
        inputs = model.assemble(batch)
        _, compressed = model.encode_media(model.encoder_input(batch.pixel_values))
    assert int(inputs.media_mask.sum()) == 5 * model.tokens_per_image
    assert torch.allclose(inputs.embeds[0][inputs.media_mask[0]], compressed.reshape(-1, WIDTH), atol=1e-6)


def test_batched_frames_equal_frames_one_by_one():
    model = tiny_vlm(seed=1).eval()
    processor = shapes_processor(model)
    clip = video(4)
    batch = processor([ask("<video>")], [[clip]])
    with torch.no_grad():
        batched = model.assemble(batch)
        model.frames_per_chunk = 1
        chunked = model.assemble(batch)
        # By hand: each frame encoded and pre-fused alone, fused text averaged over frames.
        text = model.llm.embed(batch.input_ids.clamp(min=0))
        tokens, fused = [], []
        for frame in model.encoder_input(batch.pixel_values):
            vision, compressed = model.encode_media(frame[None])
            t, f = model.prefusion(vision, compressed, text, batch.prefusion_mask)
            tokens.append(t[0])
            fused.append(f)
    assert torch.allclose(batched.embeds, chunked.embeds, atol=1e-5)
    media = batched.embeds[0][batched.media_mask[0]]
    assert torch.allclose(media, torch.cat(tokens), atol=1e-5)
    mean_text = torch.stack(fused).mean(0)[0]
    text_slots = ~batched.media_mask[0]
    expected_text = torch.cat([mean_text[:1], mean_text[2:]])  # the placeholder (position 1) became media
    assert torch.allclose(batched.embeds[0][text_slots], expected_text, atol=1e-5)


def mixed_batch(processor: Processor):
    """Text-only, single image, HD (2×2 + whole) and video samples, built by hand."""
    conversations = [
        [Turn("user", "How many red shapes are there ?"), Turn("assistant", "two")],
        ask("<image>"),
        ask("<image>"),
        ask("<video>"),
    ]
    samples = [processor.encode(turns) for turns in conversations]
    spec = processor.image_spec
    image = [image_to_tensor(picture(), spec)]
    hd = [normalise_pixels(to_pixels(v), spec) for v in hd_views(picture(64), 2, spec)]
    frames = [image_to_tensor(picture(), spec) for _ in range(3)]
    return processor.collate(samples, image + hd + frames, [1, 5, 3], ["image", "hd", "video"])


def test_mixed_batch_runs_forward_and_backward():
    model = tiny_vlm()
    processor = shapes_processor(model)
    batch = mixed_batch(processor)
    out = model(batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    k = model.tokens_per_image
    lengths = batch.attention_mask.sum(1) - batch.placeholder_mask.sum(1)
    media = torch.tensor([0, k, model.tokens_per_hd_image(2), 3 * k])
    assert out.logits.shape[1] == int((lengths + media).max())
    # The text-only sample is untouched by the vision path.
    alone = processor([[Turn("user", "How many red shapes are there ?"), Turn("assistant", "two")]])
    n = alone.input_ids.shape[1]
    assert torch.allclose(out.logits[0, :n], model(alone).logits[0], atol=1e-5)


def test_every_trainable_part_learns_from_a_video_only_batch():
    model = tiny_vlm()
    processor = shapes_processor(model)
    model(processor([ask("<video>"), ask("<video>")], [[video(3)], [video(2)]])).loss.backward()
    for name, param in model.named_parameters():
        if name.endswith("pos_embed") or "class_embedding" in name:
            continue  # the class token is dropped, the sin-cos table is fixed
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_several_images_in_one_sample():
    model = tiny_vlm().eval()
    processor = shapes_processor(model)
    first, second = picture(), picture()
    batch = processor([ask("<image> <image>")], [[first, second]])
    calls = record_prefusion(model)
    with torch.no_grad():
        inputs = model.assemble(batch)
        _, one = model.encode_media(model.encoder_input(batch.pixel_values[:1]))
    assert int(inputs.media_mask.sum()) == 2 * model.tokens_per_image
    assert len(calls) == 1 and calls[0][1] == model.tokens_per_image  # both images pre-fused in one batched call
    swapped = processor([ask("<image> <image>")], [[second, first]])
    with torch.no_grad():
        other = model.assemble(swapped)
    assert not torch.allclose(inputs.embeds[0][inputs.media_mask[0]], other.embeds[0][other.media_mask[0]])


def test_media_tag_and_item_must_agree():
    processor = shapes_processor(tiny_vlm())
    with pytest.raises(SampleError, match="conversation 0: media item 0: <video> needs a Video") as raised:
        processor([ask("<video>")], [[picture()]])
    assert raised.value.reason == "placeholder_mismatch"
    with pytest.raises(SampleError, match="use <video> for videos"):
        processor([ask("<image>")], [[video(2)]])
