"""DDP and FSDP2 (ModelParallelStrategy, gloo on CPU) in 2 processes reproduce a 1-process run
with the same global batch; the sharded checkpoint consolidates to the same model."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minivlm.model import MiniVLM
from minivlm.training.consolidate import consolidate
from minivlm.training.consolidate import read_checkpoint
from runs import ROOT, fit, last_checkpoint, log_dir, losses

STEPS = 4
# At the recipe's 2e-3, AdamW's normalised first steps turn the different summation order
# of 1 vs 2 processes into weight differences of ~1.4e-5 after 4 steps (DDP and FSDP2
# alike); a tenth of it keeps them well under 1e-5 while every weight still moves.
LR = 2e-4


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("one")
    fit(root, steps=STEPS, batch_size=8, lr=LR)
    return root


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def assert_same_run(reference: Path, other: Path, tmp_path: Path) -> None:
    expected, got = losses(reference), losses(other)
    assert sorted(expected) == list(range(STEPS)) and sorted(got) == sorted(expected)
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=1e-5), step
    assert expected[STEPS - 1] < expected[0]  # it trained
    one = weights(consolidate(last_checkpoint(reference), tmp_path / "one-model", log_dir(reference) / "config.yaml"))
    two = weights(consolidate(last_checkpoint(other), tmp_path / "two-model", log_dir(other) / "config.yaml"))
    assert one.keys() == two.keys()
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-5, rtol=0), key


def test_ddp_two_processes_match_one_process(one_process, tmp_path):
    fit(tmp_path / "ddp", steps=STEPS, batch_size=4, devices=2, strategy="ddp", lr=LR)
    assert_same_run(one_process, tmp_path / "ddp", tmp_path)


def test_fsdp2_two_processes_match_one_process_and_consolidate(one_process, tmp_path):
    root = tmp_path / "fsdp2"
    fit(root, steps=STEPS, batch_size=4, devices=2, strategy="fsdp2", lr=LR)
    checkpoint = last_checkpoint(root)
    # Sharded: a directory with one file of weights per process, behind an atomically swapped link.
    assert checkpoint.is_symlink() and checkpoint.is_dir()
    assert len(list(checkpoint.glob("*.distcp"))) == 2
    assert_same_run(one_process, root, tmp_path)
    model = MiniVLM.from_pretrained(tmp_path / "two-model")
    assert model.processor is not None


def test_fsdp2_trains_lora_adapters_and_consolidates_them_merged(tmp_path):
    root = tmp_path / "lora"
    fit(root, steps=2, batch_size=4, devices=2, strategy="fsdp2", every=2, recipe=ROOT / "recipes" / "tiny-shapes-lora.yaml")
    weights, _ = read_checkpoint(last_checkpoint(root))
    # LoRA's B matrices start at zero: non-zero ones were updated by the optimizer, which must
    # hold the sharded adapters that fully_shard put in place of the original ones.
    lora_b = [key for key in weights if "lora_B" in key]
    assert lora_b and all(weights[key].abs().max() > 0 for key in lora_b)
    model = MiniVLM.from_pretrained(consolidate(last_checkpoint(root), tmp_path / "model", log_dir(root) / "config.yaml"))
    assert not any("lora" in key for key in model.state_dict())


def test_consolidate_refuses_a_directory_that_is_no_checkpoint(tmp_path):
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(FileNotFoundError, match="not a sharded checkpoint"):
        consolidate(tmp_path / "ckpt", tmp_path / "out", recipe=tmp_path / "x.yaml")
