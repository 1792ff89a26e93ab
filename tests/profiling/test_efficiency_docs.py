"""docs/efficiency.md: every command runs as written, and every output line the page quotes is
what the command prints now."""

import re
import shlex
from pathlib import Path

from minivlm.cli import main

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "efficiency.md"


def blocks() -> list[tuple[str, str]]:
    return re.findall(r"```(\w+)\n(.*?)```", PAGE.read_text(), re.S)


def test_efficiency_page_commands_print_what_the_page_shows(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    found = blocks()
    commands = [(i, body.strip()) for i, (lang, body) in enumerate(found) if lang == "bash"]
    assert len(commands) == 4
    for i, command in commands:
        words = shlex.split(command)
        assert words[:2] == ["minivlm", "profile"]
        main(words[1:])
        # Compared word by word: column widths follow the latency cells, which vary run to run.
        printed = {tuple(line.split()) for line in capsys.readouterr().out.splitlines()}
        if i + 1 < len(found) and found[i + 1][0] == "text":
            quoted = found[i + 1][1].splitlines()
            missing = [line for line in quoted if tuple(line.split()) not in printed]
            assert not missing, f"{command}: the page quotes lines the command no longer prints: {missing}"
        for flag in ("--json", "--plot"):
            if flag in words:
                assert (tmp_path / words[words.index(flag) + 1]).stat().st_size > 0


def test_page_is_in_the_nav_and_the_index_and_its_image_exists():
    assert "efficiency.md" in (ROOT / "mkdocs.yml").read_text()
    assert "(efficiency.md)" in (ROOT / "docs" / "index.md").read_text()
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", PAGE.read_text()):
        assert (PAGE.parent / image).is_file()
