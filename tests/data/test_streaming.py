"""Streaming LLaVA shards: same samples as the map-style dataset, split exactly by rank and worker,
equal batch counts, seeded epochs, resumable positions, resampled mixing."""

from collections import Counter

import pytest
import torch
from llava_data import SPEC, make_llava, processor
from torch.utils.data import DataLoader

from minivlm.cli import main
from minivlm.data.samples import Prepared, VideoOptions
from minivlm.data.sources import LlavaJsonDataset, ShardSource
from minivlm.data.streaming import StreamingDataset
from minivlm.processing.images import image_to_pixels


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava")
    annotations = make_llava(root, 200)
    main(["shards", "--annotations", str(annotations), "--media-root", str(root), "--out", str(root / "shards"),
          "--max-count", "32", "--progress", "false"])
    return root, annotations


def run(dataset: StreamingDataset, workers: int) -> list:
    return list(DataLoader(dataset, batch_size=None, num_workers=workers))


def stream(root, **kwargs) -> StreamingDataset:
    kwargs.setdefault("batch_size", 8)
    return StreamingDataset([ShardSource(str(root / "shards"), VideoOptions())], processor(), **kwargs)


def test_streaming_yields_the_map_style_ids_and_pixels(llava):
    root, annotations = llava
    reference = LlavaJsonDataset(annotations, root, processor())
    expected = {item.id for item in reference}
    assert len(expected) == 200 and all(isinstance(item, Prepared) for item in reference)
    batches = run(stream(root, num_workers=2), workers=2)
    ids = [i for b in batches for i in b.ids]
    assert sorted(ids) == sorted(expected)
    # The pixels that arrive are the ones of the named record, not of a neighbour.
    for batch in batches[:3]:
        assert batch.batch.pixel_values.shape[0] == len(batch.ids) >= 2
        for row, sample_id in enumerate(batch.ids):
            expected_pixels = image_to_pixels(root / "images" / f"{sample_id[1:]}.png", SPEC)
            assert torch.equal(batch.batch.pixel_values[row], expected_pixels)


@pytest.mark.parametrize("world_size", [2, 3])
def test_every_rank_and_worker_gets_its_own_samples_and_the_same_batch_count(llava, world_size):
    root, _ = llava
    per_rank = []
    for rank in range(world_size):
        dataset = stream(root, rank=rank, world_size=world_size, num_workers=2, seed=5)
        batches = run(dataset, workers=2)
        assert len(batches) == len(dataset)
        per_rank.append(batches)
    counts = {len(b) for b in per_rank}
    assert len(counts) == 1
    ids = Counter(i for batches in per_rank for b in batches for i in b.ids)
    assert max(ids.values()) == 1
    # 200 samples: all of them over 2 ranks; 3 ranks take 66 each and leave 2 out this epoch.
    assert len(ids) == (200 // world_size) * world_size
    for batches in per_rank:  # both workers of a rank contribute
        assert {b.worker for b in batches} == {0, 1}


def test_epochs_are_seeded_and_differ(llava):
    root, _ = llava

    def order(seed, epoch):
        dataset = stream(root, seed=seed)
        dataset.epoch = epoch
        return [i for b in run(dataset, workers=0) for i in b.ids]

    first = order(0, 0)
    assert order(0, 0) == first
    assert order(0, 1) != first and sorted(order(0, 1)) == sorted(first)
    assert order(1, 0) != first
    unshuffled = stream(root, shuffle=False)
    assert [i for b in run(unshuffled, workers=0) for i in b.ids] == [f"s{i:03d}" for i in range(200)]


def test_resume_replays_the_order_and_skips_consumed_windows(llava):
    root, _ = llava
    dataset = stream(root, num_workers=2, seed=3)
    full = {(b.worker, b.index): b.ids for b in run(dataset, workers=2)}
    dataset.resume = [4, 2]
    rest = {(b.worker, b.index): b.ids for b in run(dataset, workers=2)}
    assert rest == {k: v for k, v in full.items() if k[1] >= (4, 2)[k[0]]}


def test_brace_patterns_and_pipe_commands_read_the_same_shards(llava):
    root, _ = llava
    manifest = ShardSource(str(root / "shards"), VideoOptions())
    braces = ShardSource(str(root / "shards" / "data-{000000..000006}.tar"), VideoOptions())
    assert braces.counts == manifest.counts and sum(braces.counts) == 200
    piped = ShardSource(f"pipe:cat {root / 'shards' / 'data-000001.tar'}", VideoOptions())
    assert piped.counts == [32]
    assert [s.key for s in piped.read(0, 30, None)] == [f"{i:09d}" for i in (62, 63)]


def test_resampled_mixing_follows_weights_with_equal_counts(llava, tmp_path):
    root, _ = llava
    other = tmp_path / "other"
    main(["shards", "--annotations", str(make_llava(other, 20, prefix="o")), "--media-root", str(other), "--out",
          str(other / "shards"), "--progress", "false"])
    sources = [ShardSource(str(root / "shards"), VideoOptions()), ShardSource(str(other / "shards"), VideoOptions())]
    lengths = []
    drawn = Counter()
    for rank in range(2):
        dataset = StreamingDataset(sources, processor(), batch_size=8, rank=rank, world_size=2, num_workers=2,
                                   resampled=True, weights=[1.0, 3.0], samples_per_epoch=400, seed=rank)
        batches = run(dataset, workers=2)
        lengths.append(len(batches))
        drawn.update(len(b.ids) for b in batches)
        ids = [i for b in batches for i in b.ids]
        assert len(ids) == 200
        # Weights 1:3 -> about 3/4 of the draws come from the small set (ids o000..o019).
        small = sum(i.startswith("o") for i in ids)
        assert 0.65 < small / len(ids) < 0.85
    assert lengths[0] == lengths[1] == len(dataset)


def test_weights_without_resampling_are_refused(llava):
    root, _ = llava
    with pytest.raises(ValueError, match="resampled=True"):
        stream(root, weights=[1.0])


def test_resampled_epochs_need_no_counts_and_survive_broken_shards(llava, tmp_path):
    root, _ = llava
    (tmp_path / "broken.tar").write_bytes(b"not a tar" * 100)
    spec = f"{root / 'shards' / 'data-{000000..000006}.tar'}::{tmp_path / 'broken.tar'}"
    source = ShardSource(spec, VideoOptions(), count=False)
    assert source.counts == [0] * 8
    dataset = StreamingDataset([source], processor(), batch_size=8, num_workers=2, resampled=True,
                               samples_per_epoch=120, seed=3)
    batches = run(dataset, workers=2)
    assert len(batches) == len(dataset) == 16
    # (seed 3 draws the broken shard.) A broken draw is reported and another shard drawn: the epoch still holds 120 real samples.
    assert sum(len(b.ids) for b in batches) == 120 and not any(b.repeated for b in batches)
    failures = [s for b in batches for s in b.skipped]
    assert failures and {s.reason for s in failures} == {"unreadable_shard"}
    assert all("broken.tar" in s.message for s in failures)
