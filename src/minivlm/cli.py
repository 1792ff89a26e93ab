"""`minivlm` command line.

`fit | validate | test | predict` are LightningCLI subcommands over a recipe; `convert`,
`export`, `push` and `chat` are plain commands whose options come from typed signatures.
"""

from __future__ import annotations

import logging
import sys
from argparse import ArgumentError
from typing import Any, Literal

from jsonargparse import CLI
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.cli import LightningCLI

from minivlm.cli_args import normalise
from minivlm.quiet import quiet_third_party
from minivlm.training.module import MiniVLMModule
from minivlm.training.predictions import PredictionsWriter
from minivlm.training.progress import step_progress_bar

TRAINING_COMMANDS = ("fit", "validate", "test", "predict")
OVERVIEW = """usage: minivlm <command> [options]

commands:
  fit        train a model from a recipe:  minivlm fit --config recipes/tiny-shapes.yaml
  validate   one evaluation pass over the validation set
  test       one evaluation pass over the test set
  predict    generate answers for the predict set
  convert    turn another project's checkpoint into a minivlm model directory
             (minivlm convert hf-llava SRC DST | minivlm convert llava-mini SRC DST)
  shards     LLaVA JSON + media folder -> WebDataset shards (minivlm shards --annotations A --media-root M --out D)
  evaluate   answer a question file and score it:  minivlm evaluate --model DIR --questions Q.jsonl --out A.jsonl
  profile    FLOPs per part, KV-cache memory and latency of recipes, side by side
  export     turn a training checkpoint into a model directory:  minivlm export --checkpoint RUN/last.ckpt --out DIR
  push       upload a model directory (or a checkpoint) to the Hub:  minivlm push --model DIR --repo-id USER/NAME
  chat       talk to a model about images and videos:  minivlm chat --model DIR --image cat.png "What is this?"
  consolidate  a training checkpoint (file or sharded FSDP2 directory) -> model directory
             (minivlm consolidate CHECKPOINT OUTPUT [--recipe RUN/config.yaml])

`minivlm <command> --help` lists every option of a command."""


class ConfigError(Exception):
    """A recipe that parses but cannot be built (mismatched widths, bad values, a missing file)."""


class MiniVLMCLI(LightningCLI):
    """LightningCLI over `MiniVLMModule` and any LightningDataModule named by class_path.

    Building the parts happens before any training starts; an error there is a recipe
    error and is reported as one line rather than a traceback.
    """

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Any:
        # An honest progress bar unless the recipe brings its own or turns it off; predictions get written.
        given = [*(config.get("callbacks") or []), *callbacks]
        extra = []
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in given):
            extra.append(step_progress_bar())
        if self.subcommand == "predict" and not any(isinstance(c, PredictionsWriter) for c in given):
            extra.append(PredictionsWriter())
        return super()._instantiate_trainer(config, [*callbacks, *extra])

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as error:  # anything raised while building parts is a recipe problem
            raise ConfigError(f"{type(error).__name__}: {error}") from error


def one_line(error: BaseException) -> str:
    """An error message folded onto one line (jsonargparse nests its explanations over several)."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return text.removeprefix("Parser key ") or type(error).__name__


def convert(args: list[str]) -> None:
    """`minivlm convert hf-llava|llava-mini SRC DST [options]`."""
    from minivlm.hub.convert.hf_llava import convert_hf_llava
    from minivlm.hub.convert.llava_mini import convert_llava_mini

    # Converters report what they drop and write through logging; show it on the terminal.
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    CLI({"hf-llava": convert_hf_llava, "llava-mini": convert_llava_mini}, args=args, prog="minivlm convert")


def shards(args: list[str]) -> None:
    """`minivlm shards --annotations FILE --media-root DIR --out DIR [options]`."""
    from minivlm.data.shards import shards_command

    CLI(shards_command, args=normalise(args, shards_command), prog="minivlm shards")


def evaluate(args: list[str]) -> None:
    """`minivlm evaluate --model DIR_OR_ID --questions Q.jsonl --out A.jsonl [options]`."""
    from minivlm.eval.evaluate import evaluate as run

    try:
        CLI(run, args=normalise(args, run), prog="minivlm evaluate", as_positional=False)
    except (ValueError, FileNotFoundError) as error:  # bad question, answer or model files: one line
        print(f"minivlm evaluate: error: {one_line(error)}", file=sys.stderr)
        sys.exit(2)


def profile(args: list[str]) -> None:
    """`minivlm profile --config RECIPE [--compare RECIPE ...] [options]` (minivlm.profiling.command)."""
    from minivlm.profiling.command import run

    try:
        run(args)
    except (OSError, ValueError) as error:  # a missing recipe or a value it cannot be profiled with
        raise ConfigError(str(error)) from error
def export(
    *,
    checkpoint: str,
    out: str,
    merge_lora: bool = False,
    dtype: Literal["fp32", "bf16", "fp16"] | None = None,
    recipe: str | None = None,
    max_shard_size: str = "5GB",
) -> None:
    """Write the model directory of a training checkpoint (config.json, safetensors, processor, recipe, card).

    Args:
        checkpoint: a Lightning checkpoint written by `minivlm fit` (e.g. runs/x/checkpoints/last.ckpt)
        out: the model directory to write
        merge_lora: fold LoRA adapters into the weights (required when the model has adapters)
        dtype: store floating weights in this precision (default: as trained)
        recipe: the recipe the run used (default: the config.yaml LightningCLI saved with the run)
        max_shard_size: weights above this size are split into numbered shards with an index
    """
    from minivlm.training.checkpoint import export_checkpoint

    files = export_checkpoint(checkpoint, out, recipe, merge_lora, dtype, max_shard_size)
    print(f"wrote {len(files)} files to {out}")


def push(
    *,
    model: str,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    dry_run: bool = False,
    recipe: str | None = None,
) -> None:
    """Upload a model directory to the Hugging Face Hub (a .ckpt is exported first).

    The token comes from HF_TOKEN or `hf auth login`; it is never printed or written.

    Args:
        model: a model directory, or a training checkpoint (.ckpt) to export first
        repo_id: the Hub repository, USER/NAME (created if it does not exist)
        private: create the repository as private
        revision: the branch to upload to (created if needed)
        dry_run: list the files that would be uploaded and upload nothing
        recipe: for a .ckpt, the recipe the run used (default: the run's config.yaml)
    """
    from minivlm.hub.push import push_directory
    from minivlm.training.checkpoint import model_directory

    with model_directory(model, recipe) as directory:
        files = push_directory(directory, repo_id, private=private, revision=revision, dry_run=dry_run)
    verb = "would upload" if dry_run else "uploaded"
    print(f"{verb} {len(files)} files to {repo_id}" + (f" ({revision})" if revision else "") + ":")
    print("\n".join(f"  {name}" for name in files))


def chat(
    *,
    model: str,
    image: list[str] | None = None,
    video: str | None = None,
    prompt: str | None = None,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    device: str = "cpu",
) -> None:
    """Talk to a model: one answer to PROMPT, or an interactive chat without one.

    Args:
        model: a model directory or a Hub repo id
        image: an image file for the first question (repeat for several)
        video: a video file for the first question
        prompt: the question (also accepted as the last, bare argument); without it, an interactive chat
        max_new_tokens: the longest answer, in tokens
        temperature: 0 is greedy; above 0 samples
        top_p: sample from the smallest set of tokens holding this much probability
        seed: seed for sampling
        device: where the model runs (cpu, cuda, cuda:1, ...)
    """
    from minivlm.chat import run_chat

    run_chat(model, image or [], video, prompt, max_new_tokens, temperature, top_p, seed, device)


PLAIN_COMMANDS = {"export": (export, None), "push": (push, None), "chat": (chat, "prompt")}


def consolidate(args: list[str]) -> None:
    """`minivlm consolidate CHECKPOINT OUTPUT [--recipe RECIPE]`."""
    from minivlm.training.consolidate import consolidate as consolidate_checkpoint

    output = CLI(consolidate_checkpoint, args=args, prog="minivlm consolidate")
    print(f"model directory written to {output}")


def main(args: list[str] | None = None) -> None:
    """Entry point of the `minivlm` console script."""
    args = sys.argv[1:] if args is None else args
    if not args or args[0] in ("-h", "--help"):
        print(OVERVIEW)
        sys.exit(0 if args else 2)
    try:
        quiet_third_party()
        if args[0] == "convert":
            convert(args[1:])
        elif args[0] == "shards":
            shards(args[1:])
        elif args[0] == "evaluate":
            evaluate(args[1:])
        elif args[0] == "profile":
            profile(args[1:])
        elif args[0] in PLAIN_COMMANDS:
            function, positional = PLAIN_COMMANDS[args[0]]
            try:
                CLI(function, args=normalise(args[1:], function, positional), prog=f"minivlm {args[0]}")
            except (FileNotFoundError, ValueError) as error:  # bad paths and bad models are user errors
                print(f"minivlm {args[0]}: error: {one_line(error)}", file=sys.stderr)
                sys.exit(2)
        elif args[0] == "consolidate":
            consolidate(args[1:])
        elif args[0] in TRAINING_COMMANDS or args[0].startswith("-"):
            # LightningCLI reads sys.argv itself; handing it `args` as well makes it warn about our own call.
            saved_argv, sys.argv = sys.argv, ["minivlm", *args]
            try:
                MiniVLMCLI(
                    MiniVLMModule,
                    subclass_mode_data=True,
                    parser_kwargs={"exit_on_error": False},
                    save_config_kwargs={"overwrite": True},
                )
            finally:
                sys.argv = saved_argv
        else:
            print(f"minivlm: error: unknown command {args[0]!r}\n\n{OVERVIEW}", file=sys.stderr)
            sys.exit(2)
    except (ArgumentError, ConfigError) as error:
        print(f"minivlm: error: {one_line(error)}", file=sys.stderr)
        sys.exit(2)
