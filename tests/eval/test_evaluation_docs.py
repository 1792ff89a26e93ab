"""The examples of docs/evaluation.md run as written and print what the page says."""

import json
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"


def python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)


def test_metrics_example_gives_the_commented_values(capsys):
    namespace: dict = {}
    exec(compile(python_blocks("evaluation.md")[0], "docs/evaluation.md", "exec"), namespace)
    lines = capsys.readouterr().out.splitlines()
    assert float(lines[0]) == pytest.approx(0.9)
    assert lines[1] == "black and white dog"
    assert float(lines[2]) == pytest.approx(1 / 3)
    pope = namespace["pope"].compute()
    # tp 1 ("Yes"), fn 1 ("No." for a yes), tn 1 ("not" for a no)
    assert float(pope["accuracy"]) == pytest.approx(2 / 3) and float(pope["recall"]) == pytest.approx(0.5)
    assert float(pope["precision"]) == 1.0 and float(pope["yes_ratio"]) == pytest.approx(1 / 3)


def test_scenes_example_exports_and_evaluates(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the page writes ./scenes-model and ./scenes-test
    exec(compile(python_blocks("evaluation.md")[1], "docs/evaluation.md", "exec"), {})
    answers = [json.loads(line) for line in (tmp_path / "scenes-test" / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 8 and len({a["question_id"] for a in answers}) == 8
    score = json.loads((tmp_path / "scenes-test" / "answers.score.json").read_text())
    assert score["num_scored"] == 8 and 0.0 <= score["score"] <= 1.0
    assert "exact:" in capsys.readouterr().out


def test_question_file_example_is_valid_json():
    block = re.search(r"```json\n(.*?)```", (DOCS / "evaluation.md").read_text(), re.S).group(1)
    record = json.loads(block)
    assert {"question_id", "image", "text", "answers"} <= record.keys() and len(record["answers"]) == 10
