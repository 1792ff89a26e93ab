"""Token counts after media expansion, max_length truncation, image square modes, and a
custom template saved with a model."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_vlm
from minivlm.compressors import QueryCompressor
from minivlm.data.synthetic import build_shapes_tokenizer
from minivlm.model import MiniVLM
from minivlm.processing.batch import IGNORE_INDEX, PLACEHOLDER_ID
from minivlm.processing.images import image_to_tensor, to_square
from minivlm.processing.processor import Processor, SampleError
from minivlm.processing.templates import JinjaTemplate, MarkerTemplate, Turn, get_template
from minivlm.processing.video import Video
from minivlm.specs import ImageSpec

rng = np.random.default_rng(0)
QUESTION = "Is there a red circle ?"


def picture(size: int = 32) -> np.ndarray:
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def conversation(tag: str, answer: str = "yes") -> list[Turn]:
    return [Turn("user", f"{tag} {QUESTION}"), Turn("assistant", answer)]


def four_token_model() -> MiniVLM:
    # A 4x4 patch grid compressed to 2x2 = K = 4 tokens per image (K > 1, so frames and
    # HD images are told apart from single images by their counts).
    return tiny_vlm(compressor=QueryCompressor(dim=32, size=2, num_heads=4))


def processor_for(model: MiniVLM, template, hd_grid: int = 1, max_length: int | None = None) -> Processor:
    per_image = model.tokens_per_image if hd_grid == 1 else model.tokens_per_hd_image(hd_grid)
    return Processor(
        build_shapes_tokenizer(), template, model.encoder.image_spec, per_image, max_length=max_length,
        hd_grid=hd_grid, tokens_per_frame=model.tokens_per_image,
    )


@pytest.mark.parametrize("hd_grid", [1, 2])
def test_llm_length_matches_the_assembled_sequence_for_image_hd_and_video(hd_grid):
    model = four_token_model().eval()
    processor = processor_for(model, get_template("shapes"), hd_grid=hd_grid)
    frames = 3
    samples = [
        (conversation("<image>"), [picture()]),
        (conversation("<video>", "no"), [Video(tuple(picture() for _ in range(frames)))]),
        (conversation("<image> <video>"), [picture(48), Video((picture(), picture()))]),
    ]
    batch = processor([turns for turns, _ in samples], [media for _, media in samples])
    with torch.no_grad():
        inputs = model.assemble(batch)
    lengths = inputs.attention_mask.sum(dim=1).tolist()
    expected = [processor.llm_length(processor.encode(turns), media) for turns, media in samples]
    assert lengths == expected
    text = [len(processor.encode(turns).input_ids) - len(media) for turns, media in samples]
    image_tokens = 4 if hd_grid == 1 else model.tokens_per_hd_image(2)
    assert expected[0] == text[0] + image_tokens
    assert expected[1] == text[1] + frames * 4  # a video of M frames is M*K tokens, not K
    assert expected[2] == text[2] + image_tokens + 2 * 4


def test_max_length_cuts_the_end_and_keeps_labels_aligned():
    model = four_token_model()
    full = processor_for(model, get_template("shapes"))
    turns = [Turn("user", f"<image> {QUESTION}"), Turn("assistant", "yes"), Turn("user", "Is it blue ?"),
             Turn("assistant", "no")]
    sample = full.encode(turns)
    length = full.llm_length(sample, [picture()])
    cut = processor_for(model, get_template("shapes"), max_length=length - 3)
    prepared = cut.prepare(turns, [picture()])
    kept = len(sample.input_ids) - 3
    assert prepared.encoded.input_ids == sample.input_ids[:kept]
    assert prepared.encoded.labels == sample.labels[:kept]
    assert cut.llm_length(prepared.encoded, [picture()]) == length - 3


def test_over_long_samples_that_cannot_be_cut_raise_too_long_and_the_rest_collate():
    model = four_token_model()
    processor = processor_for(model, get_template("shapes"))
    turns = conversation("<image>")
    sample = processor.encode(turns)
    length = processor.llm_length(sample, [picture()])
    answer_tokens = sum(label != IGNORE_INDEX for label in sample.labels)
    processor.max_length = length - answer_tokens  # every answer token would go
    with pytest.raises(SampleError, match="would remove every answer") as raised:
        processor.prepare(turns, [picture()])
    assert raised.value.reason == "too_long"
    # A placeholder at the very end: the cut would go through the media item.
    tail = [Turn("user", f"{QUESTION} <image>"), Turn("assistant", "yes")]
    tail_len = processor.llm_length(processor.encode(tail), [picture()])
    processor.max_length = tail_len - len(processor.encode(tail).input_ids) + processor.encode(tail).input_ids.index(PLACEHOLDER_ID)
    with pytest.raises(SampleError, match="cut a media item"):
        processor.prepare(tail, [picture()])
    # A prompt cannot be cut at all.
    processor.max_length = 3
    with pytest.raises(SampleError, match="the prompt is"):
        processor.prepare(turns[:1], [picture()], add_generation_prompt=True)
    # Samples that fit still form a batch.
    processor.max_length = length
    short = processor.prepare(conversation(""), [])
    whole = processor.prepare(turns, [picture()])
    batch = processor.collate_prepared([short, whole])
    assert batch.input_ids.shape == (2, len(sample.input_ids)) and batch.pixel_values.shape[0] == 1


def test_square_modes_pad_with_the_mean_crop_the_centre_or_squash():
    spec = ImageSpec(8, (0.5, 0.25, 0.0), (0.5, 0.5, 0.5))
    wide = np.zeros((4, 16, 3), dtype=np.uint8)
    wide[:, 6:10] = 255  # a white centre band
    padded = to_square(Image.fromarray(wide), "pad", spec)
    assert padded.size == (16, 16)
    assert np.asarray(padded)[0, 0].tolist() == [128, 64, 0]  # mean colour above the image
    assert np.asarray(padded)[8, 8].tolist() == [255, 255, 255]
    cropped = image_to_tensor(wide, spec, "crop")
    squashed = image_to_tensor(wide, spec, "resize")
    assert cropped.shape == squashed.shape == (3, 8, 8)
    # The crop keeps the centre band, which then covers half the width; the squash a quarter.
    white = (1.0 - 0.5) / 0.5
    assert (cropped[0] > 0.9 * white).float().mean() > (squashed[0] > 0.9 * white).float().mean()
    with pytest.raises(ValueError, match="square must be one of"):
        Processor(build_shapes_tokenizer(), get_template("shapes"), spec, 1, square="stretch")  # type: ignore[arg-type]


def test_a_custom_template_saved_with_a_model_loads_back_and_builds_identical_batches(tmp_path):
    custom = MarkerTemplate(
        name="my-format", user_start="<|user|> ", user_end=" ", assistant_start="<|assistant|>",
        answer_prefix=" ", assistant_end=" <|end|>", system_prompt="Is there", system_end=" <|end|> ",
    )
    jinja = JinjaTemplate(
        "{% for m in messages %}{{ '<|' + m['role'] + '|> ' + m['content'] + ' <|end|> ' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}",
        name="my-jinja",
    )
    for template in (custom, jinja):
        model = four_token_model()
        model.processor = processor_for(model, template, max_length=40)
        model.processor.square = "pad"
        model.save_pretrained(tmp_path / template.name)
        loaded = MiniVLM.from_pretrained(tmp_path / template.name)
        assert loaded.processor.template == template
        assert (loaded.processor.square, loaded.processor.max_length) == ("pad", 40)
        turns = [conversation("<image>"), conversation("<image>", "no")[:1] + [Turn("assistant", "two")]]
        media = [[picture(40)], [picture(24)]]
        a, b = model.processor(turns, media), loaded.processor(turns, media)
        for name in ("input_ids", "labels", "prefusion_mask", "attention_mask", "pixel_values"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
