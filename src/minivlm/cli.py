"""`minivlm` command line: LightningCLI subcommands (fit, validate, test, predict)."""

from __future__ import annotations

import sys
from argparse import ArgumentError

from lightning.pytorch.cli import LightningCLI

from minivlm.training.module import MiniVLMModule


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
        except (ValueError, TypeError, KeyError, OSError, ImportError) as error:
            raise ConfigError(f"{type(error).__name__}: {error}") from error


def one_line(error: BaseException) -> str:
    """An error message folded onto one line (jsonargparse nests its explanations over several)."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return text.removeprefix("Parser key ") or type(error).__name__


def main(args: list[str] | None = None) -> None:
    """Entry point of the `minivlm` console script."""
    try:
        MiniVLMCLI(
            MiniVLMModule,
            subclass_mode_data=True,
            parser_kwargs={"exit_on_error": False},
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except (ArgumentError, ConfigError) as error:
        print(f"minivlm: error: {one_line(error)}", file=sys.stderr)
        sys.exit(2)
