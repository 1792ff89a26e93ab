"""Processor: chat template, placeholders, assistant-only labels, pre-fusion mask, save/load."""

import numpy as np
import pytest
import torch

from conftest import shapes_processor, tiny_vlm
from minivlm.processing.templates import Turn
from minivlm.processing.batch import IGNORE_INDEX, PLACEHOLDER_ID
from minivlm.processing.processor import Processor, SampleError


@pytest.fixture(scope="module")
def processor() -> Processor:
    return shapes_processor(tiny_vlm())


def image(value: int = 128) -> np.ndarray:
    return np.full((32, 32, 3), value, dtype=np.uint8)


def test_labels_cover_only_answers_and_end_of_turn(processor):
    turns = [Turn("user", "<image> Is there a red circle ?"), Turn("assistant", "yes")]
    batch = processor([turns], [[image()]])
    tok = processor.tokenizer
    ids = batch.input_ids[0].tolist()
    labelled = [i for i, label in zip(ids, batch.labels[0].tolist()) if label != IGNORE_INDEX]
    assert tok.convert_ids_to_tokens(labelled) == ["yes", "<|end|>"]
    assert ids.count(PLACEHOLDER_ID) == 1
    assert tok.convert_ids_to_tokens(ids[:1]) == ["<|user|>"]


def test_prefusion_mask_excludes_placeholder_answers_and_padding(processor):
    long = [Turn("user", "<image> How many red shapes are there ?"), Turn("assistant", "two")]
    short = [Turn("user", "<image> Is there a red circle ?"), Turn("assistant", "no")]
    batch = processor([long, short], [[image()], [image(0)]])
    fuse, labels, ids = batch.prefusion_mask, batch.labels, batch.input_ids
    assert not fuse[ids == PLACEHOLDER_ID].any()
    assert not fuse[labels != IGNORE_INDEX].any()
    assert not fuse[~batch.attention_mask].any()
    prompt = batch.attention_mask & (labels == IGNORE_INDEX) & (ids != PLACEHOLDER_ID)
    assert torch.equal(fuse, prompt)
    assert batch.pixel_values.shape == (2, 3, 32, 32)


def test_multi_turn_answers_are_all_labelled_and_never_fused(processor):
    turns = [
        Turn("user", "<image> Is there a red circle ?"), Turn("assistant", "yes"),
        Turn("user", "Is there a blue square ?"), Turn("assistant", "no"),
    ]
    batch = processor([turns], [[image()]])
    labelled = batch.labels[0][batch.labels[0] != IGNORE_INDEX].tolist()
    assert processor.tokenizer.convert_ids_to_tokens(labelled) == ["yes", "<|end|>", "no", "<|end|>"]
    assert int(batch.prefusion_mask.sum()) == int((batch.labels == IGNORE_INDEX).sum()) - 1


def test_generation_prompt_ends_on_assistant_header(processor):
    batch = processor([[Turn("user", "<image> Is there a red circle ?")]], [[image()]], add_generation_prompt=True)
    last = batch.input_ids[0, batch.attention_mask[0]][-1].item()
    assert processor.tokenizer.convert_ids_to_tokens([last]) == ["<|assistant|>"]
    assert (batch.labels == IGNORE_INDEX).all()


def test_errors_name_the_conversation(processor):
    turns = [Turn("user", "<image> Is there a red circle ?"), Turn("assistant", "yes")]
    with pytest.raises(SampleError, match="conversation 0: 1 media tags in the text but 2 media items") as raised:
        processor([turns], [[image(), image()]])
    assert raised.value.reason == "placeholder_mismatch"
    with pytest.raises(SampleError, match="conversation 1: turn 0 has role 'assistant'; turns must alternate") as raised:
        processor([turns, [Turn("assistant", "yes")]], [[image()], []])
    assert raised.value.reason == "bad_conversation"


def test_save_and_load_round_trip(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = Processor.from_pretrained(tmp_path)
    turns = [Turn("user", "<image> What colour is the shape at the top left ?"), Turn("assistant", "red")]
    a, b = processor([turns], [[image()]]), loaded([turns], [[image()]])
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.pixel_values, b.pixel_values)
    assert loaded.template == processor.template and loaded.image_spec == processor.image_spec


def test_earlier_answers_stay_out_of_prefusion_at_inference_unless_release_behaviour_is_asked():
    chat = [
        Turn("user", "<image> Is there a red circle ?"), Turn("assistant", "yes"),
        Turn("user", "Is there a blue square ?"),
    ]
    ours = shapes_processor(tiny_vlm())
    release = shapes_processor(tiny_vlm())
    release.answers_in_prefusion = "at_inference"
    a = ours([chat], [[image()]], add_generation_prompt=True)
    b = release([chat], [[image()]], add_generation_prompt=True)
    answer = [i for i, t in enumerate(ours.tokenizer.convert_ids_to_tokens(a.input_ids[0].clamp(min=0))) if t == "yes"]
    assert len(answer) == 1
    assert not a.prefusion_mask[0, answer[0]] and b.prefusion_mask[0, answer[0]]
    assert int(b.prefusion_mask.sum()) == int(a.prefusion_mask.sum()) + 2  # "yes" and its <|end|>
    # Training batches never fuse answers, whatever the switch says.
    train = chat + [Turn("assistant", "no")]
    assert torch.equal(ours([train], [[image()]]).prefusion_mask, release([train], [[image()]]).prefusion_mask)
