"""LLaVA records -> turns and media references."""

import pytest

from minivlm.data.records import BadSample, MediaRef, parse_llava
from minivlm.processing.templates import Turn


def convo(*pairs):
    return [{"from": who, "value": text} for who, text in pairs]


def test_roles_system_message_and_several_images():
    record = parse_llava({"id": 9, "image": ["a.jpg", "b.jpg"], "conversations": convo(
        ("system", "Be brief."), ("human", "<image>\n<image>\nSame?"), ("gpt", "No."), ("human", "Why?"), ("gpt", "Colour."))},
        "r")
    assert record.id == "9"
    assert record.turns == [Turn("user", "Be brief.\n<image>\n<image>\nSame?"), Turn("assistant", "No."),
                            Turn("user", "Why?"), Turn("assistant", "Colour.")]
    assert record.media == [MediaRef("image", ("a.jpg",)), MediaRef("image", ("b.jpg",))]


def test_video_records_read_image_tags_as_video_tags():
    record = parse_llava({"id": "v", "video": "v.mp4", "conversations": convo(("human", "<image>\nWhat?"), ("gpt", "A."))}, "r")
    assert record.turns[0].text == "<video>\nWhat?" and record.media == [MediaRef("video", ("v.mp4",))]


def test_text_only_record_has_no_media():
    record = parse_llava({"id": "t", "conversations": convo(("human", "Hi"), ("gpt", "Hello"))}, "r")
    assert record.media == [] and len(record.turns) == 2


@pytest.mark.parametrize("obj, reason, words", [
    ({"id": "x", "image": "a.jpg", "video": "v.mp4", "conversations": convo(("human", "<image>"), ("gpt", "a"))},
     "bad_record", "not both"),
    ({"id": "x", "conversations": convo(("robot", "hi"), ("gpt", "a"))}, "bad_record", "'robot'"),
    ({"id": "x", "conversations": convo(("gpt", "a"), ("human", "hi"))}, "bad_record", "alternate"),
    ({"id": "x", "conversations": [{"from": "human"}]}, "bad_record", "'value'"),
    ({"id": "x", "image": "a.jpg", "conversations": convo(("human", "no tag"), ("gpt", "a"))},
     "placeholder_mismatch", "tags []"),
    ({"id": "x", "conversations": convo(("human", "<image> hi"), ("gpt", "a"))}, "placeholder_mismatch", "tags"),
    ([1, 2], "bad_record", "JSON object"),
])
def test_bad_records_name_the_record_and_the_problem(obj, reason, words):
    with pytest.raises(BadSample, match="record 3") as error:
        parse_llava(obj, "data.json record 3")
    assert error.value.reason == reason and words in str(error.value)
