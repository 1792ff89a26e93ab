"""What `minivlm` prints: predictions written and shown, no tips or warnings about ourselves, honest totals."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from minivlm.cli import MiniVLMCLI, main
from minivlm.data.synthetic import ShapesTask
from minivlm.training.module import MiniVLMModule
from minivlm.training.predictions import PredictionsWriter
from minivlm.training.progress import StepRichProgressBar, StepTQDMProgressBar

ROOT = Path(__file__).resolve().parents[2]
SHAPES = str(ROOT / "recipes" / "tiny-shapes.yaml")
SMALL = ["--data.init_args.test_size=6", "--data.init_args.batch_size=4", "--trainer.logger=false",
         "--model.max_new_tokens=3"]


def test_predict_writes_every_answer_with_its_prompt_and_shows_a_few(tmp_path, capfd, caplog):
    caplog.set_level(logging.INFO)
    main(["predict", "--config", SHAPES, *SMALL, f"--trainer.default_root_dir={tmp_path}"])
    records = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == list(range(6))
    task = ShapesTask(image_size=32, seed=2)  # predict uses the test split: seed + 2
    for record, index in zip(records, range(6)):
        assert record["prompt"] == f"<|user|> <image> {task.sample(index).question.replace('?', ' ?')} <|end|> <|assistant|>"

    # The answers are the model's: the same prompts through generate give the same text.
    cli = MiniVLMCLI(MiniVLMModule, subclass_mode_data=True, args=["--config", SHAPES, *SMALL,
                     f"--trainer.default_root_dir={tmp_path}"], run=False)
    cli.datamodule.trainer = cli.trainer
    cli.trainer.strategy.connect(cli.model)
    cli.datamodule.setup("predict")
    expected = [a for batch in cli.datamodule.predict_dataloader() for a in cli.model.predict_step(batch, 0)]
    assert [r["answer"] for r in records] == expected

    out = capfd.readouterr()
    text = out.out + out.err + caplog.text
    assert f"wrote 6 predictions to {tmp_path / 'predictions.jsonl'}" in text
    assert sum(line.startswith("  [") for line in text.splitlines()) == 5  # `show` defaults to 5


def test_predictions_writer_takes_its_own_path(tmp_path):
    writer = PredictionsWriter(path=str(tmp_path / "out" / "p.jsonl"), show=0)
    assert writer.output_path(SimpleNamespace(world_size=1)) == tmp_path / "out" / "p.jsonl"
    assert writer.output_path(SimpleNamespace(world_size=2, global_rank=1)) == tmp_path / "out" / "p.rank1.jsonl"
    with pytest.raises(ValueError, match="show must be >= 0"):
        PredictionsWriter(show=-1)


def test_fit_prints_no_tips_and_no_warning_about_our_own_arguments(tmp_path, capfd, caplog):
    caplog.set_level(logging.INFO)  # under pytest, Lightning's info lines go to the root logger
    main(["fit", "--config", SHAPES, "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
          "--data.init_args.batch_size=2", "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"])
    out = capfd.readouterr()
    text = out.out + out.err + caplog.text
    assert "minivlm parts:" in text and "GPU available" in text  # our own output still shows
    for noise in ("args parameter is intended", "💡 Tip", "litlogger", "is deprecated"):
        assert noise not in text, noise


@pytest.mark.parametrize("bar_class", [StepRichProgressBar, StepTQDMProgressBar])
def test_progress_total_is_the_steps_that_will_run(bar_class):
    bar = bar_class()
    trainer = SimpleNamespace(max_steps=3000, global_step=0, accumulate_grad_batches=1, num_training_batches=3125,
                              max_epochs=1)
    bar._trainer = trainer
    assert bar.total_train_batches == 3000
    trainer.global_step, trainer.accumulate_grad_batches = 2900, 4
    assert bar.total_train_batches == 400  # 100 optimizer steps of 4 batches
    trainer.max_steps = -1
    assert bar.total_train_batches == 3125


def test_the_cli_installs_the_honest_bar_unless_told_otherwise(tmp_path):
    def trainer(*extra):
        return MiniVLMCLI(MiniVLMModule, subclass_mode_data=True, run=False,
                          args=["--config", SHAPES, "--trainer.logger=false",
                                f"--trainer.default_root_dir={tmp_path}", *extra]).trainer

    assert isinstance(trainer().progress_bar_callback, (StepRichProgressBar, StepTQDMProgressBar))
    assert trainer("--trainer.enable_progress_bar=false").progress_bar_callback is None


def test_help_lists_the_sharing_commands_and_their_options(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(f"\n  {command} " in out for command in ("export", "push", "chat"))
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(option in out for option in ("--checkpoint", "--out", "--merge_lora", "--dtype", "--recipe"))


def test_conventional_spellings_become_jsonargparse_ones():
    from minivlm.cli import chat, push
    from minivlm.cli_args import normalise

    assert normalise(["--model", "m", "--image", "a.png", "--image", "b.png", "--max-new-tokens", "4", "What", "is",
                      "it?"], chat, "prompt") == [
        "--model=m", "--max_new_tokens=4", '--image=["a.png", "b.png"]', "--prompt=What is it?"]
    assert normalise(["--model", "d", "--repo-id", "a/b", "--dry-run", "--private", "false"], push) == [
        "--model=d", "--repo_id=a/b", "--dry_run=true", "--private=false"]
