"""`minivlm` command line.

`fit | validate | test | predict` are LightningCLI subcommands over a recipe; `convert` is a
plain command whose options come from the typed signatures of the converter functions.
"""

from __future__ import annotations

import logging
import sys
from argparse import ArgumentError

from jsonargparse import CLI
from lightning.pytorch.cli import LightningCLI

from minivlm.training.module import MiniVLMModule

TRAINING_COMMANDS = ("fit", "validate", "test", "predict")
OVERVIEW = """usage: minivlm <command> [options]

commands:
  fit        train a model from a recipe:  minivlm fit --config recipes/tiny-shapes.yaml
  validate   one evaluation pass over the validation set
  test       one evaluation pass over the test set
  predict    generate answers for the predict set
  convert    turn another project's checkpoint into a minivlm model directory
             (minivlm convert hf-llava SRC DST | minivlm convert llava-mini SRC DST)
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
        if args[0] == "convert":
            convert(args[1:])
        elif args[0] == "consolidate":
            consolidate(args[1:])
        elif args[0] in TRAINING_COMMANDS or args[0].startswith("-"):
            MiniVLMCLI(
                MiniVLMModule,
                subclass_mode_data=True,
                parser_kwargs={"exit_on_error": False},
                save_config_kwargs={"overwrite": True},
                args=args,
            )
        else:
            print(f"minivlm: error: unknown command {args[0]!r}\n\n{OVERVIEW}", file=sys.stderr)
            sys.exit(2)
    except (ArgumentError, ConfigError) as error:
        print(f"minivlm: error: {one_line(error)}", file=sys.stderr)
        sys.exit(2)
