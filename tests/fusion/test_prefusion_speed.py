"""The fast pre-fusion (compacted text, plain causal attention, last layer on the kept rows only)
equals the dense-mask implementation it replaced, kept here as the reference."""

import pytest
import torch

from conftest import WIDTH, shapes_processor, tiny_llm_config, tiny_vlm
from minivlm.fusion import DecoderPreFusion
from minivlm.fusion.decoder import compact_text
from minivlm.fusion.rows import supports_row_subset
from minivlm.data.synthetic import ShapesTask
from minivlm.llms import HFLanguageModel
from minivlm.processing.templates import Turn


def reference_positions(num_prefix: int, fuse_mask: torch.Tensor) -> torch.Tensor:
    b = fuse_mask.shape[0]
    prefix = torch.arange(num_prefix, device=fuse_mask.device).expand(b, num_prefix)
    text = num_prefix + (fuse_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    return torch.cat([prefix, text], dim=1)


def reference_mask(num_prefix: int, fuse_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    b, l = fuse_mask.shape
    t = num_prefix + l
    keys = torch.cat([fuse_mask.new_ones(b, num_prefix), fuse_mask], dim=1)
    causal = torch.ones(t, t, dtype=torch.bool, device=fuse_mask.device).tril()
    allowed = causal[None] & keys[:, None, :]
    mask = torch.zeros(b, 1, t, t, dtype=dtype, device=fuse_mask.device)
    return mask.masked_fill(~allowed[:, None], torch.finfo(dtype).min)


def reference_forward(self, vision, compressed, text, fuse_mask):
    """DecoderPreFusion.forward before the speed work: a dense (B, 1, T, T) mask over every slot."""
    n, k = vision.shape[1], compressed.shape[1]
    if self.detach_text:
        text = text.detach()
    hidden = torch.cat([vision, compressed.to(vision.dtype), text.to(vision.dtype)], dim=1)
    position_ids = reference_positions(n + k, fuse_mask)
    mask = reference_mask(n + k, fuse_mask, hidden.dtype)
    position_embeddings = self.rotary_embedding(hidden, position_ids=position_ids)
    for layer in self.layers:
        hidden = layer(hidden, attention_mask=mask, position_ids=position_ids, position_embeddings=position_embeddings)
    fused_text = torch.where(fuse_mask[..., None], hidden[:, n + k :], text.to(hidden.dtype))
    return hidden[:, n : n + k], fused_text


def attached(layers=2, **config) -> DecoderPreFusion:
    torch.manual_seed(0)
    fusion = DecoderPreFusion(num_layers=layers)
    fusion.attach(HFLanguageModel(config=tiny_llm_config(**config)))
    return fusion


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    vision, compressed = torch.randn(2, 5, WIDTH, generator=g), torch.randn(2, 2, WIDTH, generator=g)
    text = torch.randn(2, 7, WIDTH, generator=g)
    # Sample 0: placeholder first, an answer in the middle; sample 1: padding at the end.
    fuse = torch.tensor([[False, True, True, False, False, True, True], [True, False, True, True, True, False, False]])
    return vision, compressed, text, fuse


@pytest.mark.parametrize(
    "config",
    [{}, {"attn_implementation": "eager"}, {"model_type": "qwen3", "head_dim": 12}],
    ids=["llama-sdpa", "llama-eager", "qwen3-whole-last-layer"],
)
def test_outputs_and_gradients_equal_the_dense_mask_reference(config):
    attn = config.pop("attn_implementation", "sdpa")
    torch.manual_seed(0)
    fusion = DecoderPreFusion(num_layers=2)
    fusion.attach(HFLanguageModel(config=tiny_llm_config(**config), attn_implementation=attn))
    vision, compressed, text, fuse = inputs()
    vision.requires_grad_(True)
    tokens, fused = fusion(vision, compressed, text, fuse)
    ref_tokens, ref_fused = reference_forward(fusion, vision, compressed, text, fuse)
    assert torch.allclose(tokens, ref_tokens, atol=1e-5)
    assert torch.allclose(fused, ref_fused, atol=1e-5)
    assert torch.equal(fused[~fuse], text[~fuse])
    grads = torch.autograd.grad((tokens.sum() + fused.square().sum()), [vision, *fusion.parameters()])
    ref_grads = torch.autograd.grad((ref_tokens.sum() + ref_fused.square().sum()), [vision, *fusion.parameters()])
    for ours, theirs in zip(grads, ref_grads):
        assert torch.allclose(ours, theirs, atol=1e-5)


def test_row_subset_applies_to_llama_layers_only():
    assert supports_row_subset(attached().layers[-1])
    assert not supports_row_subset(attached(model_type="qwen3", head_dim=12).layers[-1])  # q/k norms


def test_no_dense_mask_and_last_layer_runs_queries_and_mlp_on_kept_rows_only():
    fusion = attached()
    vision, compressed, text, fuse = inputs()
    seen = {}
    fusion.layers[0].register_forward_pre_hook(lambda m, a, kw: seen.update(mask=kw["attention_mask"]), with_kwargs=True)
    last = fusion.layers[-1]
    for name, module in [("q", last.self_attn.q_proj), ("k", last.self_attn.k_proj), ("mlp", last.mlp)]:
        module.register_forward_hook(lambda m, a, out, name=name: seen.update({name: a[0].shape[1]}))
    fusion(vision, compressed, text, fuse)
    assert seen["mask"] is None  # sdpa runs is_causal
    longest_fused = int(fuse.sum(dim=1).max())  # 4: masked slots at the end are cut
    assert seen["k"] == 5 + 2 + longest_fused
    assert seen["q"] == seen["mlp"] == 2 + longest_fused


def test_compact_text_puts_fused_slots_first_and_cuts_the_masked_tail():
    text = torch.arange(2 * 4, dtype=torch.float32).view(2, 4, 1)
    fuse = torch.tensor([[False, True, False, True], [True, True, True, False]])
    compact, order = compact_text(text, fuse)
    assert compact.shape == (2, 3, 1)
    assert compact[0, :2, 0].tolist() == [1.0, 3.0] and compact[1, :, 0].tolist() == [4.0, 5.0, 6.0]
    assert order[fuse].tolist() == [0, 1, 0, 1, 2]
    with torch.device("meta"):
        assert compact_text(text.to("meta"), fuse.to("meta"))[0].shape == (2, 4, 1)


def test_model_logits_loss_and_generated_tokens_equal_the_reference(monkeypatch):
    model = tiny_vlm(prefusion=DecoderPreFusion(num_layers=2)).eval()
    processor = shapes_processor(model)
    task = ShapesTask(image_size=32)
    samples = [task.sample(i) for i in range(2)]
    train = processor(
        [[Turn("user", f"<image> {s.question}"), Turn("assistant", s.answer)] for s in samples], [[s.image] for s in samples]
    )
    prompt = processor([[Turn("user", f"<image> {s.question}")] for s in samples], [[s.image] for s in samples], True)
    with torch.no_grad():
        out, tokens = model(train), model.generate(prompt, max_new_tokens=4)
        monkeypatch.setattr(DecoderPreFusion, "forward", reference_forward)
        ref, ref_tokens = model(train), model.generate(prompt, max_new_tokens=4)
    assert torch.allclose(out.logits, ref.logits, atol=1e-5)
    assert torch.allclose(out.loss, ref.loss, atol=1e-5)
    assert torch.equal(tokens, ref_tokens)
