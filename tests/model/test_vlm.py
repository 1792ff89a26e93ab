"""MiniVLM: width checks, forward/loss, text-only samples, generate == argmax of forward."""

import numpy as np
import pytest
import torch

from conftest import VISION, WIDTH, shapes_processor, tiny_encoder, tiny_llm_config, tiny_vlm
from minivlm.compressors import PoolCompressor, QueryCompressor
from minivlm.processing.templates import Turn
from minivlm.fusion import DecoderPreFusion, NoPreFusion
from minivlm.llms import HFLanguageModel
from minivlm.model import MiniVLM, WidthMismatchError
from minivlm.processing.batch import IGNORE_INDEX
from minivlm.projectors import MLPProjector


def images(n: int, seed: int = 0) -> list[list[np.ndarray]]:
    """One random image for each of n samples."""
    rng = np.random.default_rng(seed)
    return [[rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)] for _ in range(n)]


QA = [Turn("user", "<image> Is there a red circle ?"), Turn("assistant", "yes")]
TEXT_ONLY = [Turn("user", "How many red shapes are there ?"), Turn("assistant", "two")]


def test_width_mismatch_names_both_parts_and_numbers():
    with pytest.raises(WidthMismatchError, match="MLPProjector produces width 40 but HFLanguageModel expects width 48"):
        MiniVLM(tiny_encoder(), QueryCompressor(VISION, num_heads=4), MLPProjector(VISION, 40), NoPreFusion(),
                HFLanguageModel(config=tiny_llm_config()))
    with pytest.raises(WidthMismatchError, match="HFVisionEncoder produces width 32 but QueryCompressor expects width 16"):
        MiniVLM(tiny_encoder(), QueryCompressor(16, num_heads=4), MLPProjector(VISION, WIDTH), NoPreFusion(),
                HFLanguageModel(config=tiny_llm_config()))
    with pytest.raises(WidthMismatchError, match="MLPProjector produces width 48 but PoolCompressor expects width 32"):
        MiniVLM(tiny_encoder(), PoolCompressor(VISION), MLPProjector(VISION, WIDTH), NoPreFusion(),
                HFLanguageModel(config=tiny_llm_config()))


def test_forward_shapes_loss_and_one_token_per_image(vlm):
    proc = shapes_processor(vlm)
    batch = proc([QA, QA], images(2))
    out = vlm(batch)
    text_len = int(batch.attention_mask[0].sum())
    assert out.logits.shape == (2, text_len - 1 + vlm.tokens_per_image, 64)
    assert vlm.tokens_per_image == 1
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    # The loss is the mean cross-entropy over answer tokens only.
    logits, labels = out.logits[:, :-1], out.labels[:, 1:]
    scored = labels != IGNORE_INDEX
    expected = torch.nn.functional.cross_entropy(logits[scored], labels[scored])
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert int(scored.sum()) == 4


def test_the_image_changes_the_answer_logits(vlm):
    proc = shapes_processor(vlm)
    a = vlm(proc([QA], images(1, seed=1))).logits
    b = vlm(proc([QA], images(1, seed=2))).logits
    assert not torch.allclose(a[0, -3:], b[0, -3:])


def test_text_only_sample_skips_vision_and_matches_plain_llm(vlm):
    proc = shapes_processor(vlm)
    mixed = vlm(proc([QA, TEXT_ONLY], [images(1)[0], []]))
    alone = proc([TEXT_ONLY])
    assert alone.pixel_values is None
    plain, _ = vlm.llm(vlm.llm.embed(alone.input_ids), attention_mask=alone.attention_mask)
    n = plain.shape[1]
    assert torch.allclose(mixed.logits[1, :n], plain[0], atol=1e-5)
    assert torch.allclose(vlm(alone).logits, plain, atol=1e-5)


def test_every_part_gets_a_gradient(vlm):
    proc = shapes_processor(vlm)
    vlm(proc([QA, QA], images(2))).loss.backward()
    for part in ("encoder", "compressor", "projector", "prefusion", "llm"):
        grads = [p.grad for p in getattr(vlm, part).parameters() if p.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), part


def test_frozen_encoder_runs_without_grad():
    model = tiny_vlm()
    model.encoder.requires_grad_(False)
    feats = model.encoder(torch.randn(2, 3, 32, 32))
    assert not feats.requires_grad


@pytest.mark.parametrize("vision_tokens", ["prefused", "compressed"])
def test_generate_equals_argmax_of_full_forward(vision_tokens):
    model = tiny_vlm(seed=3, vision_tokens=vision_tokens).eval()
    proc = shapes_processor(model)
    prompts = [[QA[0]], [Turn("user", "<image> What colour is the shape at the top left ?")]]
    pixels = images(2, seed=4)
    batch = proc(prompts, pixels, add_generation_prompt=True)
    new = model.generate(batch, max_new_tokens=5)
    assert new.shape == (2, 5)
    for i in range(2):
        # Re-run the prompt plus the generated tokens in one forward: generated tokens are
        # answer tokens, so pre-fusion does not see them, exactly as during generation.
        single = proc([prompts[i]], [pixels[i]], add_generation_prompt=True)
        n = single.input_ids.shape[1]
        single.input_ids = torch.cat([single.input_ids, new[i : i + 1]], dim=1)
        single.attention_mask = torch.ones_like(single.input_ids, dtype=torch.bool)
        single.prefusion_mask = torch.cat([single.prefusion_mask, torch.zeros(1, 5, dtype=torch.bool)], dim=1)
        single.labels = None
        logits = model(single).logits
        k = model.tokens_per_image
        predicted = logits[0, n - 1 + k - 1 : -1].argmax(dim=-1)
        assert predicted.tolist() == new[i].tolist()


def test_generate_stops_at_eos_and_pads(vlm):
    vlm.eval()
    proc = shapes_processor(vlm)
    batch = proc([[QA[0]]], images(1), add_generation_prompt=True)
    first = vlm.generate(batch, max_new_tokens=1)[0, 0].item()
    out = vlm.generate(batch, max_new_tokens=4, eos_token_id=first, pad_token_id=0)
    assert out.tolist() == [[first]]


def test_no_prefusion_and_pool_compressor_compose():
    torch.manual_seed(0)
    model = MiniVLM(tiny_encoder(), PoolCompressor(WIDTH, size=2), MLPProjector(VISION, WIDTH), NoPreFusion(),
                    HFLanguageModel(config=tiny_llm_config()))
    proc = shapes_processor(model)
    out = model(proc([QA], images(1)))
    assert model.tokens_per_image == 4
    assert out.logits.shape[1] == int(proc([QA], images(1)).attention_mask.sum()) - 1 + 4
    assert isinstance(model.prefusion, NoPreFusion) and not isinstance(model.prefusion, DecoderPreFusion)


def test_save_and_from_pretrained_round_trip(tmp_path):
    model = tiny_vlm(seed=5)
    model.processor = shapes_processor(model)
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"config.json", "model.safetensors", "processor.json", "tokenizer.json"}
    loaded = MiniVLM.from_pretrained(tmp_path)
    batch = model.processor([QA], images(1))
    assert torch.equal(model(batch).logits, loaded(batch).logits)
    assert loaded.processor.tokens_per_image == 1
    assert type(loaded.prefusion) is DecoderPreFusion and loaded.prefusion.num_layers == 1


def test_from_pretrained_is_strict_and_names_keys(tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_vlm().save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights.pop("compressor.query")
    weights["compressor.extra"] = torch.zeros(1)
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing \['compressor.query'\], unexpected \['compressor.extra'\]"):
        MiniVLM.from_pretrained(tmp_path)


def test_from_pretrained_rejects_foreign_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        MiniVLM.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llava"}')
    with pytest.raises(ValueError, match="not a minivlm config"):
        MiniVLM.from_pretrained(tmp_path)
