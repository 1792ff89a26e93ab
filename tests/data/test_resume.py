"""Kill and resume mid-epoch through the Lightning checkpoint: exactly the remaining samples follow."""

import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from llava_data import fit, make_llava, processor
from torch.utils.data import DataLoader

from minivlm.cli import main
from minivlm.data.llava import LlavaDataModule

STEPS_BEFORE_KILL = 5


class Killed(Exception):
    pass


class KillAfter(L.Callback):
    """Stops the run like a crash once `steps` optimizer steps (and their checkpoint) are done."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.steps:
            raise Killed


class RecordingDataModule(LlavaDataModule):
    """Remembers the ids of every training batch handed to the model, in order."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seen: list[list[str]] = []

    def on_before_batch_transfer(self, batch, dataloader_idx):
        if getattr(batch, "split", None) == "train":
            self.seen.append(batch.ids)
        return super().on_before_batch_transfer(batch, dataloader_idx)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    main(["shards", "--annotations", str(make_llava(root, 48)), "--media-root", str(root), "--out",
          str(root / "shards"), "--max-count", "10", "--progress", "false"])
    return root / "shards"


def settings(shards):
    return dict(shards=str(shards), batch_size=4, num_workers=2, seed=7, shuffle_buffer=8)


def test_kill_and_resume_mid_epoch_yields_exactly_the_remaining_samples(shards, tmp_path):
    # The order one uninterrupted epoch would take, read straight from the dataset.
    reference = RecordingDataModule(**settings(shards))
    reference.processor = processor()
    dataset = reference.dataset("train", rank=0, world_size=1)
    reference.before_epoch(dataset)
    expected = [b.ids for b in DataLoader(dataset, batch_size=None, num_workers=2)]
    assert len(expected) == 12 and len({i for ids in expected for i in ids}) == 48

    first = RecordingDataModule(**settings(shards))
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=STEPS_BEFORE_KILL, save_top_k=-1)
    with pytest.raises(Killed):
        fit(first, callbacks=[checkpoint, KillAfter(STEPS_BEFORE_KILL)], enable_checkpointing=True)
    trained_before = first.seen[:STEPS_BEFORE_KILL]  # the batch fetched when the kill came was never trained

    second = RecordingDataModule(**settings(shards))
    trainer = fit(second, ckpt_path=str(tmp_path / f"epoch=0-step={STEPS_BEFORE_KILL}.ckpt"))
    assert trained_before + second.seen == expected  # none lost, none repeated, same order
    assert trainer.callback_metrics["data/good"] == 48  # the epoch's counts survive the resume too


def test_resuming_with_another_worker_count_is_refused(shards, tmp_path):
    first = RecordingDataModule(**settings(shards))
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
    with pytest.raises(Killed):
        fit(first, callbacks=[checkpoint, KillAfter(2)], enable_checkpointing=True)
    changed = RecordingDataModule(**(settings(shards) | {"num_workers": 1}))
    with pytest.raises(ValueError, match="different data layout.*num_workers"):
        fit(changed, ckpt_path=str(tmp_path / "epoch=0-step=2.ckpt"))


def test_a_checkpoint_at_the_end_of_an_epoch_does_not_resume_into_an_empty_epoch(shards):
    datamodule = LlavaDataModule(**settings(shards))
    datamodule.processor = processor()
    dataset = datamodule.dataset("train", rank=0, world_size=1)
    state = {"epoch": 0, "num_workers": 2, "batch_size": 4, "world_size": 1, "seed": 7, "quality": [0] * 11}
    datamodule.load_state_dict(state | {"next": dataset.worker_batches()})
    datamodule.before_epoch(dataset)
    assert dataset.resume is None and datamodule.position["next"] == [0, 0]
    datamodule.load_state_dict(state | {"next": [2, 1]})
    datamodule.before_epoch(dataset)
    assert dataset.resume == [2, 1] and dataset.worker_offset == 1
