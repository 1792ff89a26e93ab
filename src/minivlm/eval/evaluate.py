"""`minivlm evaluate`: answer a LLaVA-format question file with batched greedy generation and score it.

Question file: one JSON object per line with `question_id`, `text`, optionally `image` or
`video` (paths relative to `media_root`) and `answers` (the reference: a string, a list of
acceptable strings, or the ten human answers for `vqa`). Answers are appended to the answers
file as each batch finishes, so an interrupted run resumes with the questions it had not
answered yet; the score is printed and written as JSON.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torchmetrics import Metric

from minivlm.eval.metrics import AnswerExactMatch, MultipleChoiceAccuracy, POPEMetrics, VQAAccuracy
from minivlm.model.decoding import CacheKind
from minivlm.model.vlm import MiniVLM
from minivlm.processing.processor import IMAGE_TAG, VIDEO_TAG
from minivlm.processing.templates import Turn
from minivlm.processing.video import load_video

MetricName = Literal["vqa", "exact", "mc", "pope"]
METRICS: dict[str, type[Metric]] = {
    "vqa": VQAAccuracy,
    "exact": AnswerExactMatch,
    "mc": MultipleChoiceAccuracy,
    "pope": POPEMetrics,
}
# The number a benchmark is reported by; POPE is reported by F1 in the LLaVA papers.
HEADLINE = {"vqa": "accuracy", "exact": "accuracy", "mc": "accuracy", "pope": "f1"}


@dataclass(frozen=True)
class Question:
    """One line of a question file."""

    question_id: str
    text: str
    image: str | None = None
    video: str | None = None
    answers: Any = None


def read_questions(path: Path) -> list[Question]:
    """Parses a question file; a bad line is an error naming the file and line number."""
    questions: list[Question] = []
    seen: set[str] = set()
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not a JSON object ({error.msg})") from None
        if not isinstance(record, dict) or "question_id" not in record or not isinstance(record.get("text"), str):
            raise ValueError(f"{where}: a question needs `question_id` and a string `text`")
        if record.get("image") is not None and record.get("video") is not None:
            raise ValueError(f"{where}: a question has an `image` or a `video`, not both")
        question_id = str(record["question_id"])
        if question_id in seen:
            raise ValueError(f"{where}: question_id {question_id!r} appears twice")
        seen.add(question_id)
        questions.append(
            Question(question_id, record["text"], record.get("image"), record.get("video"), record.get("answers"))
        )
    if not questions:
        raise ValueError(f"{path}: no questions")
    return questions


def read_answered(path: Path, known: set[str]) -> dict[str, dict]:
    """Answers already in `path`, by question id. A truncated last line (a run killed while
    writing) is dropped from the file; any other bad line is an error."""
    path = Path(path)
    if not path.is_file():
        return {}
    lines = path.read_text().splitlines(keepends=True)
    answered: dict[str, dict] = {}
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) and not line.endswith("\n"):
                path.write_text("".join(lines[:-1]))
                break
            raise ValueError(f"{path}:{number}: not a JSON answer record") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise ValueError(f"{path}:{number}: an answer record is an object with `question_id` and a string `text`")
        question_id = str(record.get("question_id"))
        if question_id not in known:
            raise ValueError(f"{path}:{number}: question_id {question_id!r} is not in the question file (wrong --out?)")
        answered[question_id] = record
    return answered


def build_prompt(question: Question, prompt_suffix: str = "") -> str:
    """The user turn: the media tag first (as LLaVA puts it) unless the text places it, then
    the text, then the benchmark's suffix on its own line."""
    text = question.text
    tag = IMAGE_TAG if question.image is not None else VIDEO_TAG if question.video is not None else None
    if tag is not None and tag not in text:
        text = f"{tag}\n{text}"
    return f"{text}\n{prompt_suffix}" if prompt_suffix else text


def _media(question: Question, media_root: Path | None) -> list:
    root = Path(media_root) if media_root is not None else Path(".")
    if question.image is not None:
        path = root / question.image
        if not path.is_file():
            raise FileNotFoundError(f"question {question.question_id}: image {path} does not exist")
        return [path]
    if question.video is not None:
        return [load_video(root / question.video)]
    return []


def score_answers(metric: MetricName, questions: list[Question], answers: dict[str, dict]) -> dict[str, Any]:
    """Scores every answered question that has a reference."""
    scorer = METRICS[metric]()
    scored = [q for q in questions if q.answers is not None and q.question_id in answers]
    for question in scored:
        try:
            scorer.update([answers[question.question_id]["text"]], [question.answers])
        except (TypeError, ValueError) as error:
            message = f"question {question.question_id}: its `answers` do not suit --metric {metric}: {error}"
            raise ValueError(message) from None
    if scored:
        value = scorer.compute()
        scores = {k: float(v) for k, v in value.items()} if isinstance(value, dict) else {"accuracy": float(value)}
    else:
        scores = {}
    return {
        "metric": metric,
        "score": scores.get(HEADLINE[metric]),
        "scores": scores,
        "num_questions": len(questions),
        "num_answered": sum(q.question_id in answers for q in questions),
        "num_scored": len(scored),
    }


def run_evaluation(
    model: MiniVLM,
    questions: list[Question],
    out: Path,
    metric: MetricName,
    media_root: Path | None = None,
    prompt_suffix: str = "",
    batch_size: int = 8,
    max_new_tokens: int = 16,
    model_id: str = "",
    decode_cache: CacheKind = "dynamic",
    compile_decode: bool = False,
) -> dict[str, Any]:
    """Answers the questions not yet in `out` (appending each batch as it finishes) and scores all.
    `decode_cache` and `compile_decode` are `MiniVLM.generate`'s `cache` and `compile`."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    processor = model.processor
    if processor is None:
        raise ValueError("the model has no processor (tokenizer and template); save it with one")
    out = Path(out)
    answers = read_answered(out, {q.question_id for q in questions})
    pending = [q for q in questions if q.question_id not in answers]
    out.parent.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    model.eval()
    with out.open("a") as sink:
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            prompts = [build_prompt(q, prompt_suffix) for q in chunk]
            batch = processor(
                [[Turn("user", prompt)] for prompt in prompts],
                [_media(q, media_root) for q in chunk],
                add_generation_prompt=True,
            ).to(device)
            with torch.inference_mode():
                tokens = model.generate(
                    batch,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=processor.eos_token_id,
                    pad_token_id=processor.tokenizer.pad_token_id,
                    cache=decode_cache,
                    compile=compile_decode,
                )
            for question, prompt, row in zip(chunk, prompts, tokens):
                text = processor.decode(row)
                record = {"question_id": question.question_id, "prompt": prompt, "text": text, "model_id": model_id}
                answers[question.question_id] = record
                sink.write(json.dumps(record) + "\n")
            sink.flush()
            os.fsync(sink.fileno())
    return score_answers(metric, questions, answers)


def evaluate(
    model: str,
    questions: Path,
    out: Path,
    metric: MetricName = "exact",
    media_root: Path | None = None,
    prompt_suffix: str = "",
    batch_size: int = 8,
    max_new_tokens: int = 16,
    device: str = "cpu",
    score_out: Path | None = None,
    decode_cache: CacheKind = "dynamic",
    compile_decode: bool = False,
) -> dict[str, Any]:
    """Answer a LLaVA-format question file and score the answers.

    Args:
        model: a model directory written by `MiniVLM.save_pretrained`, or a Hub repo id.
        questions: the question file (JSONL: question_id, text, image or video, optional answers).
        out: the answers file (JSONL), appended to as answers come; rerun to resume.
        metric: vqa (VQAv2 soft accuracy), exact (exact match), mc (option letter A-E), pope.
        media_root: directory that `image` and `video` paths are relative to.
        prompt_suffix: text appended on a new line after each question, e.g.
            "Answer the question using a single word or phrase."
        batch_size: questions per generate call.
        max_new_tokens: the longest answer generated.
        device: where the model runs (cpu, cuda, cuda:1, ...).
        score_out: where the score JSON goes; default: the answers file with `.score.json`.
        decode_cache: the LLM's KV cache while generating: dynamic (grows per token) or static
            (preallocated per batch; same answers, faster decoding).
        compile_decode: run each decoding step as a `torch.compile`d graph (needs
            decode_cache static; compiles once per batch shape, which takes a while).
    """
    parsed = read_questions(questions)  # a bad question file fails before the model loads
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    loaded = MiniVLM.from_pretrained(model).to(device)
    result = run_evaluation(
        loaded, parsed, out, metric, media_root, prompt_suffix, batch_size, max_new_tokens, model_id=str(model),
        decode_cache=decode_cache, compile_decode=compile_decode,
    )
    result |= {"model": str(model), "questions": str(questions), "answers": str(out)}
    score_path = Path(score_out) if score_out is not None else Path(out).with_suffix(".score.json")
    score_path.write_text(json.dumps(result, indent=2) + "\n")
    shown = "n/a (no references)" if result["score"] is None else f"{result['score']:.4f}"
    details = ", ".join(f"{name} {value:.4f}" for name, value in result["scores"].items())
    print(f"{metric}: {shown} over {result['num_scored']} questions ({details}); wrote {score_path}")
    return result
