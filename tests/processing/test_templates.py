"""Chat templates render once and tokenise once: ids equal tokenising the whole rendered text,
labels cover exactly the answers and their end-of-turn markers."""

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from minivlm.processing.batch import IGNORE_INDEX, PLACEHOLDER_ID
from minivlm.processing.processor import Processor
from minivlm.processing.templates import (
    JinjaTemplate, MarkerTemplate, PlainTemplate, Turn, get_template, template_from_dict,
)
from minivlm.specs import ImageSpec

SPEC = ImageSpec(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# The structure of Llama-3's own chat_template (bos, role headers, trimmed content, <|eot_id|>).
LLAMA3_JINJA = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CORPUS = [
    "A chat between a curious human and an artificial intelligence assistant.",
    "USER: What is in the image? ASSISTANT: A red circle and a blue square.",
    "How many shapes are there? There are two. Is it red? yes no Describe the picture.",
    "system\n\nYou see images. user\n\nassistant\n\n",
] * 10


@pytest.fixture(scope="module")
def sentencepiece_tokenizer() -> PreTrainedTokenizerFast:
    """A SentencePiece-style BPE with Metaspace pre-tokenisation, trained offline on a few lines."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    specials = ["<unk>", "<s>", "</s>", "<pad>", *LLAMA3_SPECIALS]
    backend.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=specials))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        additional_special_tokens=LLAMA3_SPECIALS,
    )


CHAT = [
    Turn("user", "What is in the image?"), Turn("assistant", "A red circle and a blue square."),
    Turn("user", "How many shapes are there?"), Turn("assistant", "There are two."),
]


def labelled_runs(ids: list[int], labels: list[int]) -> list[list[int]]:
    """The label ids as contiguous runs (one per answer)."""
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for token, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            assert label == token
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(label)
        previous = label
    return runs


def processor_for(tokenizer, template) -> Processor:
    return Processor(tokenizer, template, SPEC, tokens_per_image=1)


def test_vicuna_ids_equal_tokenising_the_whole_rendering(sentencepiece_tokenizer):
    tok = sentencepiece_tokenizer
    template = get_template("vicuna_v1")
    text = template.render(CHAT).text
    assert text.startswith("<s>A chat between") and "ASSISTANT: A red circle and a blue square.</s>USER:" in text
    sample = processor_for(tok, template).encode(CHAT)
    assert sample.input_ids == tok(text, add_special_tokens=False)["input_ids"]
    # What tokenising pieces one by one gives instead: a lone word-boundary token before each answer.
    head = text[: text.index("A red circle")]
    piecewise = tok(head, add_special_tokens=False)["input_ids"] + tok("A red circle", add_special_tokens=False)["input_ids"]
    whole = tok(text[: text.index(" and a blue")], add_special_tokens=False)["input_ids"]
    assert piecewise != whole


def test_vicuna_labels_cover_exactly_answers_and_end_of_turn(sentencepiece_tokenizer):
    tok = sentencepiece_tokenizer
    sample = processor_for(tok, get_template("vicuna_v1")).encode(CHAT)
    runs = labelled_runs(sample.input_ids, sample.labels)
    assert [tok.decode(run).strip() for run in runs] == ["A red circle and a blue square.</s>", "There are two.</s>"]
    assert all(tok.convert_ids_to_tokens(run)[-1] == "</s>" for run in runs)
    # Pre-fusion sees exactly the tokens that are not trained.
    assert sample.fuse == [label == IGNORE_INDEX for label in sample.labels]


def test_vicuna_generation_prompt_ends_like_training_before_the_answer(sentencepiece_tokenizer):
    tok = sentencepiece_tokenizer
    processor = processor_for(tok, get_template("vicuna_v1"))
    prompt = processor.encode(CHAT[:3], add_generation_prompt=True).input_ids
    trained = processor.encode(CHAT).input_ids
    # The prompt is a token prefix of the training sequence: the first answer token carries its own space.
    assert trained[: len(prompt)] == prompt
    assert tok.convert_ids_to_tokens(trained[len(prompt)]).startswith("▁")


def test_jinja_llama3_template_ids_labels_and_system_prompt(sentencepiece_tokenizer):
    tok = sentencepiece_tokenizer
    tok.chat_template = LLAMA3_JINJA
    tok.bos_token = "<|begin_of_text|>"
    try:
        template = get_template("tokenizer", tokenizer=tok, system_prompt="You see images.")
        assert isinstance(template, JinjaTemplate) and template.variables["bos_token"] == "<|begin_of_text|>"
        processor = processor_for(tok, template)
        text = template.render(CHAT).text
        assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou see images.<|eot_id|>")
        sample = processor.encode(CHAT)
        assert sample.input_ids == tok(text, add_special_tokens=False)["input_ids"]
        runs = labelled_runs(sample.input_ids, sample.labels)
        assert [tok.decode(run) for run in runs] == ["A red circle and a blue square.<|eot_id|>", "There are two.<|eot_id|>"]
        assert processor.eos_token_id == tok.convert_tokens_to_ids("<|eot_id|>")
        prompt = processor.encode(CHAT[:3], add_generation_prompt=True)
        assert tok.decode(prompt.input_ids).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
        # The earlier answer stays marked (and out of pre-fusion); the open turn has none.
        assert [tok.decode(run) for run in labelled_runs(prompt.input_ids, prompt.labels)] == [
            "A red circle and a blue square.<|eot_id|>"
        ]
    finally:
        tok.bos_token = "<s>"
        tok.chat_template = None


def test_plain_keeps_only_media_and_trains_the_caption(sentencepiece_tokenizer):
    tok = sentencepiece_tokenizer
    processor = processor_for(tok, get_template("plain"))
    turns = [Turn("user", "<image>\nDescribe the picture."), Turn("assistant", "A red circle.")]
    sample = processor.encode(turns)
    caption = tok("A red circle.\n", add_special_tokens=False)["input_ids"]
    assert sample.input_ids == [PLACEHOLDER_ID] + caption
    assert sample.labels == [IGNORE_INDEX] + caption
    assert sample.tags == ["<image>"]


def test_a_template_that_does_not_render_prefixes_is_refused(sentencepiece_tokenizer):
    # Renders the number of messages first, so a conversation's beginning is not a prefix of it.
    odd = JinjaTemplate("{{ messages|length }}{% for m in messages %}{{ m['content'] }};{% endfor %}")
    with pytest.raises(ValueError, match="not render a conversation's beginning as a prefix"):
        odd.render(CHAT)


def test_templates_round_trip_by_content():
    custom = MarkerTemplate(name="mine", user_start="Q: ", user_end="\n", assistant_start="A:", assistant_end="\n\n",
                            answer_prefix=" ", system_prompt="Be brief.", system_end="\n")
    for template in (custom, PlainTemplate(separator="|"), JinjaTemplate(LLAMA3_JINJA, variables={"bos_token": "<b>"}),
                     get_template("vicuna_v1", system_prompt=None)):
        assert template_from_dict(template.to_dict()) == template
    assert template_from_dict("vicuna_v1") == get_template("vicuna_v1")
    with pytest.raises(KeyError, match="unknown chat template 'vicuna'"):
        get_template("vicuna")
    with pytest.raises(ValueError, match="has no system prompt"):
        get_template("plain", system_prompt="x")


def test_processor_refuses_a_slow_tokenizer(sentencepiece_tokenizer):
    class Slow:
        pad_token_id = 0
        is_fast = False

    with pytest.raises(ValueError, match="slow tokenizer"):
        Processor(Slow(), get_template("plain"), SPEC, 1)  # type: ignore[arg-type]


def test_batch_of_two_different_conversations_pads_and_labels_each(sentencepiece_tokenizer):
    tok = sentencepiece_tokenizer
    processor = processor_for(tok, get_template("vicuna_v1"))
    short = [Turn("user", "Is it red?"), Turn("assistant", "yes")]
    batch = processor([CHAT, short])
    for row, turns in enumerate((CHAT, short)):
        sample = processor.encode(turns)
        n = len(sample.input_ids)
        assert batch.input_ids[row, :n].tolist() == sample.input_ids
        assert batch.labels[row, :n].tolist() == sample.labels
        assert not batch.attention_mask[row, n:].any() and (batch.labels[row, n:] == IGNORE_INDEX).all()
    assert torch.equal(batch.prefusion_mask, batch.attention_mask & (batch.labels == IGNORE_INDEX))
