"""`minivlm push` against a recorded HfApi boundary: exactly the model files go up, the token nowhere."""

from __future__ import annotations

import fnmatch
import logging
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from minivlm.cli import main
from minivlm.hub.export import export_model
from minivlm.training.checkpoint import load_trained_model

SECRET = "hf_minivlmTestSecret0123456789"


class Recorder:
    """Replaces the HfApi methods push uses; records what would reach the Hub."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[str, dict]] = []
        self.uploaded: list[str] = []
        monkeypatch.setattr(HfApi, "create_repo", self.create_repo)
        monkeypatch.setattr(HfApi, "create_branch", self.create_branch)
        monkeypatch.setattr(HfApi, "upload_folder", self.upload_folder)

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        # What huggingface_hub would send: files of the folder matching allow_patterns.
        folder = Path(kwargs["folder_path"])
        self.uploaded = sorted(
            str(p.relative_to(folder)) for p in folder.rglob("*")
            if p.is_file() and any(fnmatch.fnmatch(str(p.relative_to(folder)), pat) for pat in kwargs["allow_patterns"])
        )


@pytest.fixture
def exported(run, tmp_path) -> tuple[Path, list[str]]:
    directory = tmp_path / "model"
    files = export_model(load_trained_model(run / "checkpoints" / "last.ckpt").model, directory)
    names = sorted(str(p.relative_to(directory)) for p in files)
    # Things that must stay local.
    (directory / "notes.pkl").write_bytes(b"x")
    (directory / ".cache").mkdir()
    (directory / ".cache" / "lock.json").write_text("{}")
    (directory / "events.out.tfevents").write_text("x")
    return directory, names


def no_secret_anywhere(tmp_path: Path, text: str) -> None:
    assert SECRET not in text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_push_creates_the_repo_and_uploads_exactly_the_exported_files(exported, tmp_path, monkeypatch, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    recorder = Recorder(monkeypatch)
    directory, names = exported
    main(["push", "--model", str(directory), "--repo-id", "me/tiny-shapes", "--private", "--revision", "v1"])
    assert [name for name, _ in recorder.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert recorder.calls[0][1] | {} == {"repo_id": "me/tiny-shapes", "private": True, "exist_ok": True, "repo_type": "model"}
    assert recorder.calls[1][1]["branch"] == "v1" and recorder.calls[2][1]["revision"] == "v1"
    assert recorder.uploaded == names
    assert "token" not in recorder.calls[2][1]  # huggingface_hub finds it itself; minivlm never handles it
    out = capsys.readouterr()
    assert f"uploaded {len(names)} files to me/tiny-shapes (v1)" in out.out
    no_secret_anywhere(tmp_path, out.out + out.err + caplog.text)


def test_dry_run_lists_the_files_and_uploads_nothing(exported, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    recorder = Recorder(monkeypatch)
    directory, names = exported
    main(["push", "--model", str(directory), "--repo-id", "me/tiny-shapes", "--dry-run"])
    assert recorder.calls == []
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"would upload {len(names)} files to me/tiny-shapes:"
    assert [line.strip() for line in out.splitlines()[1:]] == names
    no_secret_anywhere(tmp_path, out)


def test_pushing_a_checkpoint_exports_it_first(run, monkeypatch, capsys):
    recorder = Recorder(monkeypatch)
    main(["push", "--model", str(run / "checkpoints" / "last.ckpt"), "--repo-id", "me/from-ckpt"])
    assert recorder.uploaded == ["README.md", "config.json", "model.safetensors", "processor.json", "recipe.yaml",
                                 "tokenizer.json", "tokenizer_config.json"]
    assert not Path(recorder.calls[-1][1]["folder_path"]).exists()  # the temporary export is cleaned up


def test_push_refuses_a_directory_that_is_not_a_model(tmp_path, monkeypatch, capsys):
    recorder = Recorder(monkeypatch)
    (tmp_path / "config.json").write_text('{"format": "minivlm"}')
    with pytest.raises(SystemExit):
        main(["push", "--model", str(tmp_path), "--repo-id", "me/broken"])
    assert "has no model.safetensors" in capsys.readouterr().err
    assert recorder.calls == []
    with pytest.raises(SystemExit):
        main(["push", "--model", str(tmp_path / "missing"), "--repo-id", "me/broken"])
    assert "is not a directory" in capsys.readouterr().err
