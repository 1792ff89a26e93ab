"""docs/sharing.md runs as written: export, push --dry-run, the Python quick-start and chat."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from minivlm.cli import main
from minivlm.data.synthetic import shapes_vocabulary

PAGE = Path(__file__).resolve().parents[2] / "docs" / "sharing.md"


def blocks() -> list[tuple[str, str]]:
    return re.findall(r"```(bash|python)\n(.*?)```", PAGE.read_text(), re.S)


def test_sharing_page_runs_as_written(run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # The page starts after `minivlm fit --config recipes/tiny-shapes.yaml`; a 2-step run stands in for it.
    (tmp_path / "runs" / "tiny-shapes" / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "checkpoints" / "last.ckpt", tmp_path / "runs" / "tiny-shapes" / "checkpoints" / "last.ckpt")
    shutil.copy(run / "config.yaml", tmp_path / "runs" / "tiny-shapes" / "config.yaml")
    for method in ("create_repo", "upload_folder"):
        monkeypatch.setattr(HfApi, method, lambda *a, **k: pytest.fail("the page's push is a dry run"))

    namespace: dict = {}
    outputs = []
    for kind, code in blocks():
        capsys.readouterr()
        if kind == "python":
            exec(compile(code, "docs/sharing.md", "exec"), namespace)
        else:
            for line in code.strip().splitlines():
                assert line.startswith("minivlm "), line
                main(shlex.split(line)[1:])
        outputs.append(capsys.readouterr().out)

    assert sorted(p.name for p in (tmp_path / "my-model").iterdir()) == [
        "README.md", "config.json", "model.safetensors", "processor.json", "recipe.yaml", "tokenizer.json",
        "tokenizer_config.json"]
    export_out, push_out, python_out, chat_out = outputs
    assert export_out.startswith("wrote 7 files to my-model")
    assert push_out.splitlines()[0] == "would upload 7 files to your-name/tiny-shapes:"
    answer = namespace["answer"]
    assert python_out.strip() == answer and set(answer.split()) <= set(shapes_vocabulary())
    assert chat_out.strip() == answer  # the same greedy answer from the command line

    # The README's quick-start, in the same directory (my-model and shapes.png exist now).
    readme = (PAGE.parents[1] / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", readme, re.S)
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip() == answer
