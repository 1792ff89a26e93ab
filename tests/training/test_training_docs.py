"""docs/training.md: its commands and its Python example run as written and do what the page says."""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from minivlm.cli import main

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "training.md").read_text()


def commands() -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", PAGE, re.S)
    return [shlex.split(line)[1:] for block in blocks for line in block.splitlines() if line.startswith("minivlm ")]


def run(args, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


def test_page_commands_run_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the fit writes under ./runs
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    first, override, fit = commands()
    assert yaml.safe_load(run(first, capsys))["model"]["stage"]["llm"] == {"mode": "lora", "lr": 0.002}
    config = yaml.safe_load(run(override, capsys))["model"]
    assert config["stage"]["llm"]["mode"] == "lora" and config["lora"]["rank"] == 8
    main(fit)
    assert list((tmp_path / "runs" / "try-lora").rglob("last.ckpt"))


def test_page_python_example_adds_adapters_and_prints_the_table():
    namespace: dict = {}
    for block in re.findall(r"```python\n(.*?)```", PAGE, re.S):
        exec(compile(block, "docs/training.md", "exec"), namespace)
    module = namespace["module"]
    table = namespace["parts_table"](module)
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
    adapters = sum(p.numel() for p in module.trainable_parameters()["llm"])
    assert rows["llm"][3] == f"{adapters:,}" and rows["llm"][4:6] == ["0.0002", "(lora)"]
    assert rows["encoder"][3] == "0" and rows["encoder"][4] == "-"
    # rank 8 on 7 projections of 2 layers: A (8 x in) + B (out x 8) each
    assert adapters == 2 * 8 * (2 * (128 + 128) + 2 * (128 + 64) + 2 * (128 + 256) + (256 + 128))
