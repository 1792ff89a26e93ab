"""Column-major wide weights while decoding on CPU: same values and outputs, back to row-major for training."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from conftest import shapes_processor, tiny_llm_config, tiny_vlm
from minivlm.llms import HFLanguageModel
from minivlm.llms.layout import to_decoding_layout, to_training_layout
from minivlm.model import MiniVLM
from minivlm.model.generation import generate
from minivlm.processing.templates import Turn

PROMPTS = [
    [Turn("user", "<image> What colour is the shape at the top left ?")],
    [Turn("user", "How many blue shapes are there ? <image> Is there a green square ?")],
]


def linears(module: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in module.named_modules() if isinstance(m, nn.Linear)}


def column_major(weight: torch.Tensor) -> bool:
    return weight.t().is_contiguous() and not weight.is_contiguous()


def row_major(module: nn.Module) -> bool:
    """Every linear weight of `module` in PyTorch's default layout."""
    return all(layer.weight.is_contiguous() for layer in linears(module).values())


@pytest.fixture
def setup():
    model = tiny_vlm(seed=3).eval()
    rng = np.random.default_rng(1)
    pixels = [[rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)] for _ in PROMPTS]
    return model, shapes_processor(model)(PROMPTS, pixels, add_generation_prompt=True)


def test_generate_stores_wide_weights_column_major_with_the_same_values_and_outputs(setup):
    model, batch = setup
    reference = copy.deepcopy(model)
    reference.llm.decode_column_major = False
    before = {name: p.clone() for name, p in model.llm.named_parameters()}

    out = generate(model, batch, 6, keep_scores=True)
    want = generate(reference, batch, 6, keep_scores=True)

    wide = {name for name, m in linears(model.llm).items() if m.out_features > m.in_features}
    # The tiny Llama's output head and every layer's gate and up projections.
    assert wide == {"model.lm_head"} | {f"model.model.layers.{i}.mlp.{p}_proj" for i in range(2) for p in ("gate", "up")}
    for name, layer in linears(model.llm).items():
        assert column_major(layer.weight) == (name in wide), name
    assert row_major(reference.llm)
    for name, param in model.llm.named_parameters():
        assert torch.equal(param, before[name]), name

    assert len({tuple(row) for row in want.tokens.tolist()}) == 2  # the two samples differ
    assert out.tokens.tolist() == want.tokens.tolist()
    for got, expected in zip(out.scores, want.scores, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_train_mode_puts_the_weights_back_row_major_and_keeps_them_there(setup):
    model, batch = setup
    generate(model, batch, 2)
    moved = {name: p.clone() for name, p in model.llm.named_parameters()}
    assert any(column_major(layer.weight) for layer in linears(model.llm).values())

    model.train()  # through MiniVLM down to the LLM, as Lightning does after validation
    assert row_major(model.llm)
    for name, param in model.llm.named_parameters():
        assert torch.equal(param, moved[name]), name

    generate(model, batch, 2)  # generating in train mode leaves the training layout alone
    assert row_major(model.llm)


def test_train_mode_restores_weights_converted_after_generating(setup):
    model, batch = setup
    generate(model, batch, 2)
    model.to(torch.bfloat16)  # `to` keeps the column-major strides
    head = model.llm.output_head.weight
    assert column_major(head) and head.dtype == torch.bfloat16
    model.train()
    assert row_major(model.llm)


def test_only_untied_float32_weights_move():
    llm = HFLanguageModel(config=tiny_llm_config()).eval()
    assert to_decoding_layout(llm.to(torch.bfloat16)) == 0
    assert to_decoding_layout(llm.to(torch.float32)) == 5  # head + 2 layers x (gate, up)
    assert to_decoding_layout(llm) == 0  # already moved
    assert to_training_layout(llm) == 5

    tied = HFLanguageModel(config=tiny_llm_config(tie_word_embeddings=True)).eval()
    assert tied.output_head.weight is tied.model.get_input_embeddings().weight
    tied.prepare_decoding()
    assert tied.output_head.weight.is_contiguous()  # looked up by row as the input embedding
    assert column_major(tied.model.model.layers[0].mlp.gate_proj.weight)

    kept = HFLanguageModel(config=tiny_llm_config()).eval()
    kept.decode_column_major = False
    kept.prepare_decoding()
    assert row_major(kept)


def test_a_model_saved_after_generating_loads_with_the_same_weights(setup, tmp_path):
    model, batch = setup
    generate(model, batch, 2)
    model.save_pretrained(tmp_path)
    loaded = MiniVLM.from_pretrained(tmp_path)
    for (name, want), (_, got) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(got, want), name


def test_weights_moved_under_inference_mode_still_train():
    llm = HFLanguageModel(config=tiny_llm_config()).eval()
    with torch.inference_mode():  # as benchmarks and servers often generate
        llm.prepare_decoding()
    head = llm.output_head.weight
    assert column_major(head) and not head.is_inference()
    embeds = torch.randn(2, 3, llm.hidden_size, requires_grad=True)
    logits, _ = llm(embeds)  # eval mode, weights still column-major: backward must work
    logits.square().sum().backward()
    assert embeds.grad.abs().sum() > 0 and head.grad.abs().sum() > 0


def test_a_model_built_under_inference_mode_generates_with_the_layout_and_back(setup):
    model, batch = setup
    with torch.inference_mode():  # as a server (or decode.py) builds and runs a model
        built = copy.deepcopy(model)
        built.load_state_dict(model.state_dict())
        out = generate(built, batch, 4, keep_scores=True)
        head = built.llm.output_head.weight
        assert head.is_inference() and column_major(head)
        built.train()
        assert row_major(built.llm)
        built.eval()
        again = generate(built, batch, 4, keep_scores=True)
    want = generate(model, batch, 4, keep_scores=True)
    for got in (out, again):
        assert got.tokens.tolist() == want.tokens.tolist()
        for a, b in zip(got.scores, want.scores, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
