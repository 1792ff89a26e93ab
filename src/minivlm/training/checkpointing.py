"""Checkpoints that are either complete or absent: write elsewhere, then rename.

`AtomicCheckpointIO` (single-file checkpoints: one process, DDP) writes the file next to its
destination, flushes it to disk and `os.replace`s it over the destination, so a kill at any
moment leaves either the previous checkpoint or the new one. Sharded (FSDP2) checkpoints are
directories, which cannot be replaced atomically: `swap_directory` writes them under a fresh
name and atomically repoints a symbolic link (`last.ckpt` -> `last.ckpt.data-<id>`).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

DATA_SUFFIX = ".data-"


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` that never leaves a half-written file at the checkpoint path."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO takes no storage_options, got {storage_options!r}")
        if not _is_local(path):
            # Object stores write objects whole; there is no partial file to protect against.
            return super().save_checkpoint(checkpoint, path)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with open(temporary, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        _sync_directory(path.parent)


def _is_local(path: str | Path) -> bool:
    return get_filesystem(path).protocol in ("file", ("file", "local"), "local")


def _sync_directory(directory: Path) -> None:
    """Makes a rename durable (the directory entry itself reaches the disk)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fresh_data_directory(path: Path) -> Path:
    """A new, unused directory name next to `path` for the next version of its contents."""
    return path.with_name(f"{path.name}{DATA_SUFFIX}{uuid.uuid4().hex[:8]}")


def swap_directory(path: Path, written: Path) -> None:
    """Points `path` (a symbolic link) at the complete directory `written`, atomically, then
    removes what `path` pointed to before and any leftover of an interrupted write."""
    if path.exists() and not path.is_symlink():
        # A directory written by another strategy: it cannot be swapped atomically, only replaced.
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    link = path.with_name(f".{path.name}.link-{uuid.uuid4().hex[:8]}")
    os.symlink(written.name, link)
    os.replace(link, path)
    _sync_directory(path.parent)
    # The previous version, and directories of writes killed before their swap.
    for leftover in path.parent.glob(f"{path.name}{DATA_SUFFIX}*"):
        if leftover.name != written.name:
            shutil.rmtree(leftover, ignore_errors=True)


def remove_directory_checkpoint(path: Path) -> None:
    """Deletes a checkpoint written by `swap_directory` (the link and its data) or a plain one."""
    if path.is_symlink():
        target = path.resolve()
        path.unlink()
        shutil.rmtree(target, ignore_errors=True)
    elif path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
