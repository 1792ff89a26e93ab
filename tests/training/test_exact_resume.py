"""Exact resume after SIGKILL, and checkpoints that a kill while writing cannot corrupt."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from minivlm.data.resumable import ResumableSampler
from minivlm.training.checkpointing import AtomicCheckpointIO, fresh_data_directory, swap_directory
from runs import fit, last_checkpoint, losses

STEPS, KILL_AT = 6, 4


def recorder(path: Path) -> dict:
    return {"class_path": "resume_callbacks.RecordBatches", "init_args": {"path": str(path)}}


def batches(path: Path) -> list[tuple[int, str]]:
    return [(int(step), digest) for step, digest in (line.split() for line in path.read_text().splitlines())]


def test_run_killed_after_a_checkpoint_resumes_exactly(tmp_path):
    # Attention dropout in the LLM makes every step consume random numbers: without restored
    # RNG states the resumed steps would differ.
    dropout = "--model.llm.init_args.config.attention_dropout=0.1"
    whole = tmp_path / "whole"
    fit(whole, dropout, steps=STEPS, batch_size=4, callbacks=[recorder(tmp_path / "whole.txt")])

    parts = tmp_path / "parts"
    killed = fit(
        parts, dropout, steps=STEPS, batch_size=4, version="first", check=False,
        # The kill comes first, so the batch it interrupts is not recorded.
        callbacks=[{"class_path": "resume_callbacks.KillAt", "init_args": {"step": KILL_AT}}, recorder(tmp_path / "parts.txt")],
    )
    assert killed.returncode == -signal.SIGKILL
    assert sorted(losses(parts, "first")) == list(range(KILL_AT))
    fit(
        parts, dropout, "--ckpt_path=last", steps=STEPS, batch_size=4,
        version="second", callbacks=[recorder(tmp_path / "parts.txt")],
    )

    expected = losses(whole)
    got = losses(parts, "first") | losses(parts, "second")
    assert sorted(got) == sorted(expected) == list(range(STEPS))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=1e-6), step
    # The same batches in the same order: the killed run's, then the resumed run's from step KILL_AT on.
    assert batches(tmp_path / "parts.txt") == batches(tmp_path / "whole.txt")
    final = torch.load(last_checkpoint(whole), weights_only=True)["state_dict"]
    resumed = torch.load(last_checkpoint(parts), weights_only=True)["state_dict"]
    assert final.keys() == resumed.keys()
    for key in final:
        assert torch.allclose(final[key], resumed[key], atol=1e-6, rtol=0), key


def test_sampler_gives_each_rank_its_slice_of_every_global_batch_and_resumes_mid_epoch():
    one = list(ResumableSampler(20, batch_size=4, seed=3))
    ranks = [list(ResumableSampler(20, batch_size=2, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(one) == 20 and sorted(one) == list(range(20)) and one != list(range(20))
    for step in range(5):
        assert sorted(ranks[0][2 * step : 2 * step + 2] + ranks[1][2 * step : 2 * step + 2]) == sorted(one[4 * step : 4 * step + 4])
    sampler = ResumableSampler(20, batch_size=4, seed=3)
    sampler.start(epoch=0, batch=3)
    assert list(sampler) == one[12:]
    assert list(sampler) == one  # the skip applies once
    sampler.set_epoch(1)
    assert sorted(list(sampler)) == list(range(20)) and list(sampler) != one
    with pytest.raises(ValueError, match="no full global batch"):
        ResumableSampler(3, batch_size=2, seed=0, num_replicas=2, rank=0)


WRITER = """
import sys, torch
from minivlm.training.checkpointing import AtomicCheckpointIO
# About 400 MB: writing it takes long enough to be killed in the middle.
AtomicCheckpointIO().save_checkpoint({"step": 2, "weights": torch.ones(100_000_000)}, sys.argv[1])
"""


def test_kill_while_writing_a_checkpoint_leaves_the_previous_one_loadable(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1, "weights": torch.zeros(3)}, path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[2] / "src"), os.environ.get("PYTHONPATH", "")]))
    before = path.stat().st_size
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=env)

    def writing() -> bool:
        """Bytes of the new checkpoint are reaching the disk: in last.ckpt itself or in a new file."""
        others = [p for p in tmp_path.iterdir() if p != path]
        return path.stat().st_size != before or any(p.stat().st_size > 0 for p in others)

    deadline = time.monotonic() + 120
    while not writing():
        assert writer.poll() is None and time.monotonic() < deadline, "the writer finished before it could be killed"
        time.sleep(0.001)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    state = torch.load(path, weights_only=True)
    assert state["step"] == 1 and torch.equal(state["weights"], torch.zeros(3))
    AtomicCheckpointIO().save_checkpoint({"step": 3, "weights": torch.ones(2)}, path)
    assert torch.load(path, weights_only=True)["step"] == 3


def test_sharded_checkpoint_directory_is_swapped_atomically(tmp_path):
    path = tmp_path / "last.ckpt"
    first = fresh_data_directory(path)
    first.mkdir()
    (first / "shard").write_text("one")
    swap_directory(path, first)
    # A second write killed before its swap: the link still points at the complete first one.
    interrupted = fresh_data_directory(path)
    interrupted.mkdir()
    (interrupted / "shard").write_text("half")
    assert (path / "shard").read_text() == "one"
    third = fresh_data_directory(path)
    third.mkdir()
    (third / "shard").write_text("three")
    swap_directory(path, third)
    assert (path / "shard").read_text() == "three"
    # The previous version and the interrupted write are cleaned up.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["last.ckpt", third.name])
