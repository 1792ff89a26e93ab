"""The options of `minivlm profile`, parsed by jsonargparse from `profile`'s typed signature."""

from __future__ import annotations

from jsonargparse import ArgumentParser

from minivlm.profiling.report import profile


def _underscored(arg: str) -> str:
    """`--prompt-tokens=4` -> `--prompt_tokens=4`: the issue and the docs spell options with dashes."""
    if not arg.startswith("--"):
        return arg
    name, sep, value = arg[2:].partition("=")
    return "--" + name.replace("-", "_") + sep + value


def parser() -> ArgumentParser:
    """`profile`'s arguments, with `--compare` and `--sweep-tokens` taking several values after one
    flag and `--json` for `json_path`. `--config` names a recipe here, not a file of options."""
    p = ArgumentParser(prog="minivlm profile", description=profile.__doc__, exit_on_error=False)
    p.add_function_arguments(profile, skip={"json_path", "compare", "sweep_tokens"})
    p.add_argument("--compare", nargs="+", type=str, default=None, help="recipes to profile beside --config")
    p.add_argument("--sweep_tokens", nargs="+", type=int, default=None, help="vision tokens per image to sweep")
    p.add_argument("--json", type=str | None, default=None, help="write the profiles as JSON to this file")
    return p


def run(args: list[str]) -> None:
    """Parses `args` and profiles; a bad option raises ArgumentError, a bad recipe ValueError/OSError."""
    options = parser().parse_args([_underscored(a) for a in args]).as_dict()
    profile(json_path=options.pop("json"), **options)
