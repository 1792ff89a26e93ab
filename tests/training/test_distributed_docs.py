"""docs/distributed.md: its `minivlm` commands run as written (FSDP2 in 2 processes, resume
with --ckpt_path last from the sharded checkpoint, consolidation) and do what the page says."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from minivlm.model import MiniVLM

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "distributed.md").read_text()


def commands() -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", PAGE, re.S)
    return [shlex.split(line)[1:] for block in blocks for line in block.splitlines() if line.startswith("minivlm ")]


def run(args: list[str], cwd: Path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-m", "minivlm", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def test_page_commands_train_sharded_resume_and_consolidate(tmp_path):
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    fit, resume, consolidate = commands()
    run(fit, tmp_path)
    last = tmp_path / "runs" / "fsdp2" / "checkpoints" / "last.ckpt"
    assert last.is_symlink() and len(list(last.glob("*.distcp"))) == 2
    first = torch.load(last / "meta.pt", weights_only=True)
    assert first["global_step"] == 4 and first["ShapesDataModule"] == {"epoch": 0, "batches": 4}
    run(resume, tmp_path)
    state = torch.load(last / "meta.pt", weights_only=True)
    assert state["global_step"] == 6
    # The first run's last checkpoint came from the validation at step 4, mid-epoch: the resumed
    # run continued epoch 0 at batch 4. Its own last one is saved once fit stops at max_steps,
    # when Lightning counts the epoch as complete: the data would go on at epoch 1, batch 0.
    assert state["ShapesDataModule"] == {"epoch": 1, "batches": 0}
    run(consolidate, tmp_path)
    model = MiniVLM.from_pretrained(tmp_path / "my-model")
    assert model.tokens_per_image == 1 and model.processor is not None
