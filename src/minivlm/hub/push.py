"""Publishing a model directory to the Hugging Face Hub.

The token comes from `HF_TOKEN` or the login huggingface_hub already knows; minivlm never
reads, prints or writes it, it only lets `HfApi` find it. Only the files of a model
directory are uploaded (config, weights, processor, tokenizer, recipe, card), and the
directory is checked to load before anything goes up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from minivlm.model import pretrained
from minivlm.model.weights import weight_files

# Everything else in a directory (caches, logs, stray checkpoints) stays local.
UPLOAD_PATTERNS = ["*.json", "*.safetensors", "*.yaml", "*.md", "*.txt", "*.model", "*.tiktoken"]


def files_to_upload(directory: Path) -> list[str]:
    """Relative paths of the files `push` would upload, sorted."""
    return sorted(
        str(path.relative_to(directory))
        for path in directory.iterdir()
        if path.is_file() and any(path.match(pattern) for pattern in UPLOAD_PATTERNS)
    )


def check_model_directory(directory: Path) -> None:
    """Fails unless `directory` is a complete minivlm model directory (config and weights)."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory; export a checkpoint first (minivlm export)")
    pretrained.read_config(directory)
    weight_files(directory)


def push_directory(
    directory: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    dry_run: bool = False,
    api: Any = None,
) -> list[str]:
    """Creates `repo_id` if needed and uploads the model files of `directory`; returns their paths.

    With `dry_run` nothing is contacted or uploaded. `api` is an `HfApi` (one is made if None).
    """
    directory = Path(directory)
    check_model_directory(directory)
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo id {repo_id!r} must look like 'user/name'")
    files = files_to_upload(directory)
    if dry_run:
        return files
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    api.upload_folder(
        folder_path=str(directory),
        repo_id=repo_id,
        repo_type="model",
        revision=revision,
        allow_patterns=files,
        commit_message="Upload minivlm model",
    )
    return files
