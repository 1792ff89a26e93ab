"""Metrics computed over a real 2-process gloo group equal the single-process result."""

import json
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from minivlm.eval import AnswerExactMatch, ExactMatch, MultipleChoiceAccuracy, POPEMetrics, VQAAccuracy

VQA_REPLIES = ["two", "red", "no", "a cat", "3", "blue"]
VQA_REFS = [["2"] * 3 + ["x"] * 7, ["red"] * 10, ["yes"] * 10, ["cat"] * 2 + ["dog"] * 8, ["three"] + ["4"] * 9, ["blue"] * 5 + ["b"] * 5]
MC_REPLIES = ["(A)", "B", "no idea", "C.", "E", "D"]
MC_REFS = ["A", "C", "A", "C", "E", "B"]
POPE_REPLIES = ["Yes", "No", "yes", "no", "Yes, it is", "There is not"]
POPE_REFS = ["yes", "yes", "no", "no", "yes", "no"]
EXACT_REPLIES = ["red", "Blue", "green", "x", "y", "z"]
EXACT_REFS = ["red", "blue", "red", "x", "q", "z"]


def token_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, 4, generator=generator)
    labels = logits.argmax(dim=-1).roll(1, dims=1)  # labels[t + 1] = argmax[t]: all right ...
    labels[:, 0] = -100
    labels[1, 3] = (labels[1, 3] + 1) % 4  # ... except rows 1 and 4
    labels[4, 2] = (labels[4, 2] + 1) % 4
    return logits, labels


def scores(rows: slice) -> dict[str, float]:
    """Every metric updated with `rows` of the fixtures, then computed (synced if distributed)."""
    vqa, mc, pope, exact, tokens = VQAAccuracy(), MultipleChoiceAccuracy(), POPEMetrics(), AnswerExactMatch(), ExactMatch()
    vqa.update(VQA_REPLIES[rows], VQA_REFS[rows])
    mc.update(MC_REPLIES[rows], MC_REFS[rows])
    pope.update(POPE_REPLIES[rows], POPE_REFS[rows])
    exact.update(EXACT_REPLIES[rows], EXACT_REFS[rows])
    logits, labels = token_inputs()
    tokens.update(logits[rows], labels[rows])
    result = {"vqa": vqa.compute().item(), "mc": mc.compute().item(), "exact": exact.compute().item()}
    result["token_exact"] = tokens.compute().item()
    result |= {f"pope_{name}": value.item() for name, value in pope.compute().items()}
    return result


def worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        # Uneven shards on purpose: rank 0 gets 4 samples, rank 1 gets 2.
        rows = slice(0, 4) if rank == 0 else slice(4, 6)
        result = scores(rows)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_two_processes_agree_with_one(tmp_path):
    single = scores(slice(0, 6))
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        synced = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert synced.keys() == single.keys()
        for name, value in single.items():
            assert abs(synced[name] - value) < 1e-6, (rank, name, synced[name], value)
    # The fixtures are not degenerate: the metrics take values strictly between 0 and 1.
    assert 0 < single["vqa"] < 1 and 0 < single["mc"] < 1 and 0 < single["token_exact"] < 1
    assert abs(single["token_exact"] - 4 / 6) < 1e-6
    # A single rank's shard alone gives a different answer, so syncing is what makes them agree.
    assert scores(slice(0, 4)) != single
