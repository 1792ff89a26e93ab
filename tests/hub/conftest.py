"""A short real training run shared by the hub tests (export, push)."""

from __future__ import annotations

from pathlib import Path

import pytest

from minivlm.cli import main

ROOT = Path(__file__).resolve().parents[2]
SHAPES = str(ROOT / "recipes" / "tiny-shapes.yaml")


@pytest.fixture(scope="session")
def run(tmp_path_factory) -> Path:
    """The directory of a 2-step `minivlm fit` of the tiny recipe: checkpoints/last.ckpt and config.yaml."""
    root = tmp_path_factory.mktemp("run")
    main(["fit", "--config", SHAPES, "--trainer.max_steps=2", "--trainer.val_check_interval=2",
          "--data.init_args.val_size=4", "--data.init_args.batch_size=4", "--trainer.logger=false",
          "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
          f"--trainer.default_root_dir={root}"])
    return root
