"""`minivlm evaluate` on generated question files with a model whose answers are known."""

import json

import pytest
from PIL import Image

from conftest import shapes_processor, tiny_vlm, write_video
from minivlm.cli import main
from minivlm.data.synthetic import ShapesTask
from minivlm.eval.evaluate import Question, build_prompt, read_questions, run_evaluation
from minivlm.model import MiniVLM
from minivlm.model.decoding import Decoder
from minivlm.processing.templates import Turn

NUM_QUESTIONS = 6
WRONG = "zzz"  # not a word of the shapes vocabulary, so the model can never say it


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A saved tiny model, six image questions, and what the model answers to each when asked alone."""
    root = tmp_path_factory.mktemp("evaluate")
    model = tiny_vlm(seed=3)
    processor = shapes_processor(model)
    model.processor = processor
    model.save_pretrained(root / "model")
    task = ShapesTask(seed=5)
    questions, truth = [], []
    for i in range(NUM_QUESTIONS):
        sample = task.sample(i)
        Image.fromarray(sample.image).save(root / f"img{i}.png")
        questions.append({"question_id": f"q{i}", "image": f"img{i}.png", "text": sample.question})
        # One question at a time, through a path that shares nothing with evaluate's batching.
        prompt = processor([[Turn("user", f"<image>\n{sample.question}")]], [[sample.image]], add_generation_prompt=True)
        tokens = model.generate(prompt, max_new_tokens=3, eos_token_id=processor.eos_token_id, pad_token_id=0)
        truth.append(processor.decode(tokens[0]))
    return root, questions, truth


def write_questions(path, questions, references):
    path.write_text("".join(json.dumps(q | {"answers": r}) + "\n" for q, r in zip(questions, references)))


def test_evaluate_command_scores_exact_match(setup, tmp_path, capsys):
    root, questions, truth = setup
    # Questions 0, 2, 4 reference what the model says; 1, 3, 5 something it cannot say.
    write_questions(tmp_path / "q.jsonl", questions, [t if i % 2 == 0 else WRONG for i, t in enumerate(truth)])
    out = tmp_path / "answers.jsonl"
    args = ["evaluate", "--model", str(root / "model"), "--questions", str(tmp_path / "q.jsonl"), "--out", str(out)]
    main(args + ["--metric", "exact", "--media_root", str(root), "--batch_size", "4", "--max_new_tokens", "3"])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["question_id"] for r in records] == [f"q{i}" for i in range(NUM_QUESTIONS)]
    assert [r["text"] for r in records] == truth  # batched answers equal one-at-a-time answers
    score = json.loads((tmp_path / "answers.score.json").read_text())
    assert score["score"] == pytest.approx(0.5) and score["num_scored"] == NUM_QUESTIONS
    assert "exact: 0.5000 over 6 questions" in capsys.readouterr().out


def test_evaluate_vqa_metric(setup, tmp_path):
    root, questions, truth = setup
    # Two of ten annotators agree with the model on questions 0-2 (0.6 each, hand-worked), none on 3-5.
    references = [[t, t] + [WRONG] * 8 if i < 3 else [WRONG] * 10 for i, t in enumerate(truth)]
    write_questions(tmp_path / "q.jsonl", questions, references)
    main([
        "evaluate", "--model", str(root / "model"), "--questions", str(tmp_path / "q.jsonl"),
        "--out", str(tmp_path / "a.jsonl"), "--metric", "vqa", "--media_root", str(root), "--max_new_tokens", "3",
        "--score_out", str(tmp_path / "score.json"),
    ])
    assert json.loads((tmp_path / "score.json").read_text())["score"] == pytest.approx(0.3)


def test_prompt_suffix_is_appended_and_questions_without_answers_are_not_scored(setup, tmp_path, capsys):
    root, questions, _ = setup
    write_questions(tmp_path / "q.jsonl", questions[:2], [None, None])
    out = tmp_path / "a.jsonl"
    main([
        "evaluate", "--model", str(root / "model"), "--questions", str(tmp_path / "q.jsonl"), "--out", str(out),
        "--media_root", str(root), "--max_new_tokens", "2", "--prompt_suffix", "Answer briefly.",
    ])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in records] == [f"<image>\n{q['text']}\nAnswer briefly." for q in questions[:2]]
    score = json.loads(out.with_suffix(".score.json").read_text())
    assert score["score"] is None and score["num_answered"] == 2 and score["num_scored"] == 0
    assert "n/a (no references)" in capsys.readouterr().out


def test_interrupted_run_resumes_without_reasking(setup, tmp_path):
    root, questions, truth = setup
    write_questions(tmp_path / "q.jsonl", questions, [t if i < 4 else WRONG for i, t in enumerate(truth)])
    parsed = read_questions(tmp_path / "q.jsonl")
    out = tmp_path / "answers.jsonl"
    model = MiniVLM.from_pretrained(root / "model")
    generate = model.generate
    asked: list[int] = []

    def interrupted_on_second_batch(batch, **kwargs):
        if asked:
            raise KeyboardInterrupt  # what Ctrl-C raises
        asked.append(batch.batch_size)
        return generate(batch, **kwargs)

    model.generate = interrupted_on_second_batch
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(model, parsed, out, "exact", media_root=root, batch_size=2, max_new_tokens=3)
    assert len(out.read_text().splitlines()) == 2
    with out.open("a") as f:
        f.write('{"question_id": "q2", "te')  # a line cut short by a kill during the write

    def counting(batch, **kwargs):
        asked.append(batch.batch_size)
        return generate(batch, **kwargs)

    asked.clear()
    model.generate = counting
    result = run_evaluation(model, parsed, out, "exact", media_root=root, batch_size=2, max_new_tokens=3)
    assert sum(asked) == NUM_QUESTIONS - 2  # only the four unanswered questions were asked
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["question_id"] for r in records) == [f"q{i}" for i in range(NUM_QUESTIONS)]
    assert {r["question_id"]: r["text"] for r in records} == {f"q{i}": t for i, t in enumerate(truth)}
    assert result["score"] == pytest.approx(4 / 6)
    asked.clear()
    again = run_evaluation(model, parsed, out, "exact", media_root=root, batch_size=2, max_new_tokens=3)
    assert asked == [] and again["score"] == pytest.approx(4 / 6)


def test_static_cache_decoding_gives_the_same_answers(setup, tmp_path, capsys, monkeypatch):
    root, questions, truth = setup
    write_questions(tmp_path / "q.jsonl", questions, truth)
    caches = []
    original = Decoder.__init__
    monkeypatch.setattr(Decoder, "__init__", lambda self, *a: caches.append(a[3]) or original(self, *a))
    args = ["evaluate", "--model", str(root / "model"), "--questions", str(tmp_path / "q.jsonl"),
            "--media_root", str(root), "--batch_size", "4", "--max_new_tokens", "3"]
    main(args + ["--out", str(tmp_path / "a.jsonl"), "--decode_cache", "static"])
    assert caches == ["static", "static"]  # two batches
    assert [json.loads(line)["text"] for line in (tmp_path / "a.jsonl").read_text().splitlines()] == truth
    with pytest.raises(SystemExit):
        main(args + ["--out", str(tmp_path / "b.jsonl"), "--compile_decode", "true"])
    assert "compile=True needs cache='static'" in capsys.readouterr().err


def test_bad_question_file_names_the_line(tmp_path, capsys):
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question_id": 1, "text": "hi"}\n{"question_id": 2}\n')
    with pytest.raises(ValueError, match=r"q.jsonl:2: a question needs"):
        read_questions(bad)
    bad.write_text('{"question_id": 1, "text": "a"}\n{"question_id": 1, "text": "b"}\n')
    with pytest.raises(SystemExit):
        main(["evaluate", "--model", str(tmp_path), "--questions", str(bad), "--out", str(tmp_path / "a.jsonl")])
    assert "q.jsonl:2: question_id '1' appears twice" in capsys.readouterr().err


def test_answers_file_from_another_question_file_is_refused(setup, tmp_path):
    root, questions, truth = setup
    write_questions(tmp_path / "q.jsonl", questions, truth)
    out = tmp_path / "a.jsonl"
    out.write_text('{"question_id": "other", "text": "red"}\n')
    model = MiniVLM.from_pretrained(root / "model")
    with pytest.raises(ValueError, match="'other' is not in the question file"):
        run_evaluation(model, read_questions(tmp_path / "q.jsonl"), out, "exact", media_root=root)


def test_build_prompt_places_the_media_tag():
    assert build_prompt(Question("1", "What colour?", image="x.png")) == "<image>\nWhat colour?"
    assert build_prompt(Question("1", "Look: <image> What?", image="x.png"), "Short.") == "Look: <image> What?\nShort."
    assert build_prompt(Question("1", "Describe.", video="v.mp4")) == "<video>\nDescribe."
    assert build_prompt(Question("1", "No media.")) == "No media."


def test_references_that_do_not_suit_the_metric_name_the_question(setup, tmp_path):
    root, questions, truth = setup
    write_questions(tmp_path / "q.jsonl", questions[:2], ["red", "blue"])  # single strings, but vqa needs ten
    out = tmp_path / "a.jsonl"
    out.write_text("".join(json.dumps({"question_id": f"q{i}", "text": "red"}) + "\n" for i in range(2)))
    model = MiniVLM.from_pretrained(root / "model")
    with pytest.raises(ValueError, match="question q0: its `answers` do not suit --metric vqa"):
        run_evaluation(model, read_questions(tmp_path / "q.jsonl"), out, "vqa", media_root=root)
    out.write_text('{"question_id": "q0", "text": 3}\n')
    with pytest.raises(ValueError, match=r"a.jsonl:1: an answer record is an object"):
        run_evaluation(model, read_questions(tmp_path / "q.jsonl"), out, "exact", media_root=root)


def write_grey_video(path, frames: int = 8, fps: int = 4, size: int = 32) -> None:
    write_video(path, frames, fps=fps, size=size, step=25)


def test_video_image_and_text_only_questions_in_one_batch(setup, tmp_path):
    from minivlm.processing.video import load_video

    root, questions, _ = setup
    write_grey_video(tmp_path / "clip.mp4")  # 2 s at 4 fps: two frames at one per second
    mixed = [
        {"question_id": "v", "video": "clip.mp4", "text": "What colour is the shape at the top left?"},
        {"question_id": "i", "image": str(root / "img0.png"), "text": questions[0]["text"]},
        {"question_id": "t", "text": "How many red shapes are there?"},
    ]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in mixed))
    model = MiniVLM.from_pretrained(root / "model")
    processor = model.processor
    media = {"v": [load_video(tmp_path / "clip.mp4")], "i": [root / "img0.png"], "t": []}
    expected = {}
    for q in read_questions(tmp_path / "q.jsonl"):
        prompt = processor([[Turn("user", build_prompt(q))]], [media[q.question_id]], add_generation_prompt=True)
        tokens = model.generate(prompt, max_new_tokens=3, eos_token_id=processor.eos_token_id, pad_token_id=0)
        expected[q.question_id] = processor.decode(tokens[0])
    assert len(media["v"][0].frames) == 2
    out = tmp_path / "a.jsonl"
    run_evaluation(model, read_questions(tmp_path / "q.jsonl"), out, "exact", media_root=tmp_path, batch_size=3, max_new_tokens=3)
    records = {r["question_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert {k: r["text"] for k, r in records.items()} == expected
    assert records["v"]["prompt"].startswith("<video>\n") and records["t"]["prompt"] == mixed[2]["text"]
