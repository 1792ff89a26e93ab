"""oneDNN-packed linears at CPU inference: same outputs and FLOP counts, plain linears again for training."""

from __future__ import annotations

import copy
import logging
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from conftest import shapes_processor, tiny_vlm
from minivlm.hub.export import merge_lora
from minivlm.model import MiniVLM
from minivlm.model import packed_linear
from minivlm.model.conversation import CachedConversation
from minivlm.model.generation import generate
from minivlm.model.packed_linear import PackedLinear, pack_linears, unpack_linears
from minivlm.processing.templates import Turn

pytestmark = pytest.mark.skipif(not packed_linear._available, reason="this torch has no oneDNN linear")

PROMPTS = [
    [Turn("user", "<image> What colour is the shape at the top left ?")],
    [Turn("user", "How many blue shapes are there ? <image> Is there a green square ?")],
]
ANSWERED = [
    [Turn("user", "<image> Is there a red circle ?"), Turn("assistant", "yes")],
    [Turn("user", "How many shapes ? <image>"), Turn("assistant", "two")],
]


def images(count: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(1)
    return [[rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)] for _ in range(count)]


@pytest.fixture
def setup():
    model = tiny_vlm(seed=3).eval()
    return model, shapes_processor(model)(PROMPTS, images(2), add_generation_prompt=True)


def plain_linears(module: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in module.named_modules() if type(m) is nn.Linear}


def packed(module: nn.Module) -> dict[str, PackedLinear]:
    return {name: m for name, m in module.named_modules() if type(m) is PackedLinear}


def packed_products(counter: FlopCounterMode) -> int:
    return counter.get_flop_counts()["Global"].get(torch.ops.mkldnn._linear_pointwise, 0)


def test_generate_packs_every_float32_linear_with_the_same_outputs_and_flops(setup):
    model, batch = setup
    reference = copy.deepcopy(model)
    reference.cpu_packed_linears = False
    names = set(plain_linears(model))

    with FlopCounterMode(display=False) as counter:
        out = generate(model, batch, 6, keep_scores=True)
    with FlopCounterMode(display=False) as reference_counter:
        want = generate(reference, batch, 6, keep_scores=True)

    assert set(packed(model)) == names and not packed(reference)
    parts = {name.split(".")[0] for name, layer in packed(model).items() if layer._packed is not None}
    assert parts == {"encoder", "projector", "prefusion", "llm"}  # every part ran packed products
    assert len({tuple(row) for row in want.tokens.tolist()}) == 2  # the two samples differ
    assert out.tokens.tolist() == want.tokens.tolist()
    for got, expected in zip(out.scores, want.scores, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # The packed products are counted, at the FLOPs of the products they replace.
    assert packed_products(counter) > 0 and packed_products(reference_counter) == 0
    assert counter.get_total_flops() == reference_counter.get_total_flops()


def test_a_cached_conversation_packs_too(setup):
    model, _ = setup
    batch = shapes_processor(model)(PROMPTS[:1], images(1), add_generation_prompt=True)
    reference = copy.deepcopy(model)
    reference.cpu_packed_linears = False
    got = CachedConversation(model).generate(batch, 4, keep_scores=True)
    want = CachedConversation(reference).generate(batch, 4, keep_scores=True)
    assert packed(model) and not packed(reference)
    assert got.tokens.tolist() == want.tokens.tolist()
    for a, b in zip(got.scores, want.scores, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_train_mode_brings_plain_linears_back_and_they_train_like_untouched_ones(setup):
    model, batch = setup
    untouched = copy.deepcopy(model)
    generate(model, batch, 2)
    assert packed(model)

    model.train()  # as Lightning does after validation
    untouched.train()
    assert not packed(model) and set(plain_linears(model)) == set(plain_linears(untouched))
    assert all("_packed" not in layer.__dict__ for layer in plain_linears(model).values())
    training = shapes_processor(model)(ANSWERED, images(2))
    for m in (model, untouched):
        m(training).loss.backward()
    for (name, got), (_, want) in zip(model.named_parameters(), untouched.named_parameters(), strict=True):
        torch.testing.assert_close(got.grad, want.grad, atol=1e-6, rtol=0, msg=name)


def test_merging_lora_adapters_after_generating_uses_the_merged_weights(setup):
    from peft import LoraConfig, inject_adapter_in_model

    model, batch = setup
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    inject_adapter_in_model(lora, model.llm.model)
    model.eval()
    with_adapters = generate(model, batch, 4, keep_scores=True)
    assert any(name.endswith("base_layer") for name in packed(model))  # the adapters' base layers packed
    assert merge_lora(model) == 2 * 2
    merged = generate(model, batch, 4, keep_scores=True)
    assert merged.tokens.tolist() == with_adapters.tokens.tolist()
    for got, want in zip(merged.scores, with_adapters.scores, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_one_row_and_gradients_use_the_plain_product():
    torch.manual_seed(0)
    layer = nn.Linear(8, 16).eval()
    assert pack_linears(layer) == 1 and type(layer) is PackedLinear
    one, three = torch.randn(1, 8), torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(layer(one), F.linear(one, layer.weight, layer.bias))
        assert layer._packed is None  # a single row never packs
        torch.testing.assert_close(layer(three), F.linear(three, layer.weight, layer.bias), atol=1e-6, rtol=0)
        assert layer._packed is not None
    out = layer(three)  # gradients enabled: the plain product, which autograd can differentiate
    out.sum().backward()
    assert out.requires_grad and layer.weight.grad.abs().sum() > 0


def test_a_changed_weight_is_packed_again():
    torch.manual_seed(0)
    layer = nn.Linear(8, 16).eval()
    pack_linears(layer)
    x = torch.randn(4, 8)
    with torch.no_grad():
        layer(x)
        layer.weight.mul_(2)  # in place, as an optimizer step
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-6, rtol=0)
        layer.weight.data = torch.randn(16, 8)  # a new tensor
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-6, rtol=0)
        layer.load_state_dict({"weight": torch.randn(16, 8), "bias": torch.randn(16)})
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-6, rtol=0)
        layer.double()
        assert layer._packed is None  # freed by the conversion, and float64 takes the plain product
        torch.testing.assert_close(layer(x.double()), F.linear(x.double(), layer.weight, layer.bias))
        assert layer._packed is None


def test_a_layer_made_under_inference_mode_packs():
    with torch.inference_mode():  # as a converter or server may build a model
        layer = nn.Linear(8, 16).eval()
        pack_linears(layer)
        x = torch.randn(4, 8)
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-6, rtol=0)
    assert layer.weight.is_inference() and layer._packed is not None


def test_only_plain_float32_linears_pack_and_unpack_undoes_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8).bfloat16(), nn.Bilinear(8, 8, 8))
    subclass = type("Custom", (nn.Linear,), {})(8, 8)  # a subclass may have its own forward: left alone
    model.append(subclass)
    assert pack_linears(model) == 1
    assert [type(m) for m in model] == [PackedLinear, nn.Linear, nn.Bilinear, type(subclass)]
    assert unpack_linears(model) == 1 and type(model[0]) is nn.Linear


def test_opting_out_keeps_plain_linears_and_unpacks_packed_ones(setup):
    model, batch = setup
    fresh = copy.deepcopy(model)
    fresh.cpu_packed_linears = False
    generate(fresh, batch, 2)
    assert not packed(fresh)
    generate(model, batch, 2)
    assert packed(model)
    model.cpu_packed_linears = False  # opting out after generating, still in eval mode
    generate(model, batch, 2)
    assert not packed(model) and set(plain_linears(model)) == set(plain_linears(fresh))


def test_a_packed_model_copies_pickles_and_saves(setup, tmp_path):
    model, batch = setup
    want = generate(model, batch, 4).tokens
    state = {name: t.clone() for name, t in model.state_dict().items()}
    assert set(state) == set(tiny_vlm(seed=3).state_dict())  # the state dict's names are unchanged
    copied, unpickled = copy.deepcopy(model), pickle.loads(pickle.dumps(model))
    for other in (copied, unpickled):
        assert all(layer._packed is None for layer in packed(other).values())  # rebuilt on demand
        assert torch.equal(generate(other, batch, 4).tokens, want)
    model.save_pretrained(tmp_path)
    loaded = MiniVLM.from_pretrained(tmp_path)
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_a_failing_pack_falls_back_with_a_warning(monkeypatch, caplog):
    def refuse(weight, batch_size):
        raise RuntimeError("no oneDNN kernels for this CPU")

    monkeypatch.setattr(packed_linear, "_available", True)
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", refuse)
    torch.manual_seed(0)
    layer = nn.Linear(8, 16).eval()
    pack_linears(layer)
    x = torch.randn(4, 8)
    with caplog.at_level(logging.WARNING, logger=packed_linear.__name__), torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    assert "no oneDNN kernels for this CPU" in caplog.text
    assert not packed_linear._available and pack_linears(nn.Linear(8, 8)) == 0
