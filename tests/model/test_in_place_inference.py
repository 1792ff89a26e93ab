"""The whole model with the in-place MLPs (encoder and pre-fusion) gives the logits, loss and
generated tokens of the same model built from the plain transformers MLPs."""

import copy

import torch
from transformers.models.clip.modeling_clip import CLIPMLP

from conftest import shapes_processor, tiny_vlm
from minivlm.data.synthetic import ShapesTask
from minivlm.encoders.hf import _InPlaceMLP
from minivlm.fusion import DecoderPreFusion
from minivlm.fusion.mlp import InPlaceGatedMLP
from minivlm.model.generation import generate
from minivlm.processing.templates import Turn


def with_transformers_mlps(model):
    """A copy of `model` whose encoder and pre-fusion layers have the transformers MLP classes back."""
    reference = copy.deepcopy(model)
    for layer in reference.encoder.vision_model.encoder.layers:
        assert isinstance(layer.mlp, _InPlaceMLP)
        plain = CLIPMLP(reference.encoder.vision_model.config)
        plain.load_state_dict(layer.mlp.state_dict())
        layer.mlp = plain
    mlp_class = type(reference.llm.decoder_layers[0].mlp)
    for layer in reference.prefusion.layers:
        assert isinstance(layer.mlp, InPlaceGatedMLP)
        plain = mlp_class(reference.prefusion.layer_config)
        plain.load_state_dict(layer.mlp.state_dict())
        layer.mlp = plain
    return reference.eval()


def test_logits_loss_and_generated_tokens_equal_the_transformers_mlps():
    model = tiny_vlm(prefusion=DecoderPreFusion(num_layers=2), seed=3).eval()
    reference = with_transformers_mlps(model)
    processor = shapes_processor(model)
    task = ShapesTask(image_size=32)
    samples = [task.sample(i) for i in range(2)]
    images = [[s.image] for s in samples]
    train = processor([[Turn("user", f"<image> {s.question}"), Turn("assistant", s.answer)] for s in samples], images)
    prompt = processor([[Turn("user", f"<image> {s.question}")] for s in samples], images, True)
    with torch.no_grad():
        out, ref = model(train), reference(train)
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.loss, ref.loss, rtol=0, atol=1e-5)
    assert not torch.equal(out.logits[0], out.logits[1])
    ours = generate(model, prompt, max_new_tokens=5, keep_scores=True)
    theirs = generate(reference, prompt, max_new_tokens=5, keep_scores=True)
    assert torch.equal(ours.tokens, theirs.tokens)
    for step, ref_step in zip(ours.scores, theirs.scores):
        torch.testing.assert_close(step, ref_step, rtol=0, atol=1e-5)
