"""The `minivlm` command: recipes build, a short fit runs, bad recipes fail in one line."""

from pathlib import Path

import pytest
import torch
import yaml

from minivlm.cli import MiniVLMCLI, main
from minivlm.training.module import MiniVLMModule

ROOT = Path(__file__).resolve().parents[2]
SHAPES = str(ROOT / "recipes" / "tiny-shapes.yaml")
SHAPES_LORA = str(ROOT / "recipes" / "tiny-shapes-lora.yaml")
SHORT = ["--trainer.max_steps=3", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
         "--trainer.limit_val_batches=0", "--data.init_args.batch_size=8", "--trainer.enable_checkpointing=false",
         "--trainer.callbacks=[]"]


def fit_changes(recipe: str, tmp_path) -> tuple[MiniVLMModule, dict, dict]:
    """Weights before (built with the recipe's seed) and after 3 steps of `minivlm fit`."""
    args = ["--config", recipe, *SHORT, f"--trainer.default_root_dir={tmp_path}"]
    before = MiniVLMCLI(MiniVLMModule, subclass_mode_data=True, args=args, run=False).model
    before.configure_model()  # LoRA adapters exist from here on
    cli = MiniVLMCLI(MiniVLMModule, subclass_mode_data=True, args=["fit", *args])
    assert cli.trainer.global_step == 3
    return cli.model, before.model.state_dict(), cli.model.model.state_dict()


def test_fit_changes_every_part_the_recipe_trains_the_encoder_included(tmp_path):
    _, before, after = fit_changes(SHAPES, tmp_path)
    changed = {key.split(".")[0] for key in before if not torch.equal(before[key], after[key])}
    assert changed == {"encoder", "compressor", "projector", "prefusion", "llm"}
    # every trained matrix moved, not just some parameter of each part
    assert all(not torch.equal(before[k], after[k]) for k in before if k.startswith("encoder.") and before[k].ndim == 2)


def test_lora_fit_changes_adapters_and_the_full_parts_only(tmp_path):
    module, before, after = fit_changes(SHAPES_LORA, tmp_path)
    assert before.keys() == after.keys()
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    llm_changed = {key for key in changed if key.startswith("llm.")}
    adapters = {key for key in before if key.startswith("llm.") and ".lora_" in key}
    assert llm_changed and llm_changed <= adapters
    assert {key.split(".")[0] for key in changed} == {"encoder", "compressor", "projector", "prefusion", "llm"}


def test_short_fit_logs_exact_match_and_writes_checkpoints(tmp_path):
    cli = MiniVLMCLI(
        MiniVLMModule,
        subclass_mode_data=True,
        args=[
            "fit", "--config", SHAPES, "--trainer.max_steps=4", "--trainer.val_check_interval=4",
            "--data.init_args.val_size=32", "--data.init_args.batch_size=16", "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
        ],
    )
    assert cli.trainer.global_step == 4
    accuracy = float(cli.trainer.callback_metrics["val/exact_match"])
    assert 0.0 <= accuracy <= 1.0
    assert cli.model.val_exact_match.total == 0  # reset after the epoch, it had counted 32 samples
    checkpoints = list(tmp_path.rglob("*.ckpt"))
    assert any(c.name == "last.ckpt" for c in checkpoints)
    state = torch.load(next(c for c in checkpoints if c.name == "last.ckpt"), weights_only=True, map_location="cpu")
    assert state["global_step"] == 4
    assert any(k.startswith("model.compressor.query") for k in state["state_dict"])


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "convert"):
        assert command in out


def broken_recipe(tmp_path, edit) -> str:
    config = yaml.safe_load(Path(SHAPES).read_text())
    edit(config)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _unknown_class(c):
    c["model"]["compressor"]["class_path"] = "minivlm.compressors.NoSuchCompressor"


def _bad_width(c):
    c["model"]["projector"]["init_args"]["out_dim"] = 96


def _missing_argument(c):
    del c["model"]["compressor"]["init_args"]["dim"]


def _unknown_part(c):
    c["model"]["stage"]["decoder"] = {"mode": "full", "lr": 1.0}


def _typo_in_a_mode(c):
    c["model"]["stage"]["llm"]["mode"] = "ful"


def _trained_part_without_lr(c):
    c["model"]["stage"]["llm"] = {"mode": "full"}


def _bad_value_inside_a_part_config(c):
    c["model"]["encoder"]["init_args"]["config"]["patch_size"] = "16"


@pytest.mark.parametrize(
    "edit, message",
    [
        (_unknown_class, "has no attribute 'NoSuchCompressor'"),
        (_bad_width, "MLPProjector produces width 96 but HFLanguageModel expects width 128"),
        (_missing_argument, "the following arguments are required: dim"),
        (_unknown_part, "does not accept option 'model.stage.decoder.lr'"),
        (_typo_in_a_mode, "model.stage.llm.mode"),
        (_trained_part_without_lr, "stage.llm trains (full) and needs a learning rate"),
        (_bad_value_inside_a_part_config, "patch_size"),
    ],
)
def test_bad_recipe_exits_before_training_with_one_line(tmp_path, capsys, edit, message):
    path = broken_recipe(tmp_path, edit)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", path, f"--trainer.default_root_dir={tmp_path}"])
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("minivlm: error:")]
    assert len(err) == 1 and message in err[0], err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_predict_generates_answers_from_the_vocabulary(tmp_path):
    from minivlm.data.synthetic import shapes_vocabulary

    cli = MiniVLMCLI(
        MiniVLMModule,
        subclass_mode_data=True,
        args=["--config", SHAPES, "--data.init_args.test_size=8", "--data.init_args.batch_size=4",
              "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}", "--model.max_new_tokens=3"],
        run=False,
    )
    predictions = cli.trainer.predict(cli.model, datamodule=cli.datamodule)
    answers = [answer for batch in predictions for answer in batch]
    assert len(answers) == 8 and all(isinstance(a, str) for a in answers)
    # An untrained model says anything, but only in words of the closed vocabulary, ≤ 3 of them,
    # and never the special tokens (decoding drops them and stops at the end of the turn).
    vocabulary = set(shapes_vocabulary())
    assert all(len(a.split()) <= 3 and set(a.split()) <= vocabulary for a in answers)
