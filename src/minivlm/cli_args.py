"""Conventional command-line spellings for the plain commands parsed by jsonargparse.

jsonargparse derives options from a function's typed signature, spelled with underscores,
with booleans that take a value and lists given once as JSON. Users type `--merge-lora`,
`--image a.png --image b.png` and a trailing prompt; `normalise` rewrites those spellings
into jsonargparse's before parsing, so the typed signature stays the single schema.
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable


def _kinds(function: Callable) -> tuple[set[str], set[str]]:
    """Names of the boolean and the list parameters of `function`."""
    hints = typing.get_type_hints(function)
    flags, lists = set(), set()
    for name in inspect.signature(function).parameters:
        hint = hints.get(name)
        options = set(typing.get_args(hint)) | {hint}
        if bool in options:
            flags.add(name)
        if any(typing.get_origin(option) is list for option in options):
            lists.add(name)
    return flags, lists


def normalise(args: list[str], function: Callable, positional: str | None = None) -> list[str]:
    """`--a-b` -> `--a_b`; a bare boolean `--flag` -> `--flag=true`; repeated list options ->
    one JSON list; a bare word (when `positional` names a parameter) -> `--positional=word`."""
    flags, lists = _kinds(function)
    out: list[str] = []
    collected: dict[str, list[str]] = {}
    words: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--") and len(arg) > 2:
            name, has_value, value = arg[2:].partition("=")
            name = name.replace("-", "_")
            if name in flags and not has_value:
                following = args[i + 1] if i + 1 < len(args) else ""
                if following.lower() in ("true", "false"):
                    value, has_value, i = following, True, i + 1
                else:
                    value, has_value = "true", True
            elif not has_value and i + 1 < len(args) and name not in ("help", "print_config"):
                value, has_value, i = args[i + 1], True, i + 1
            if name in lists and has_value:
                collected.setdefault(name, []).append(value)
            else:
                out.append(f"--{name}={value}" if has_value else f"--{name}")
        elif positional is not None and not arg.startswith("-"):
            words.append(arg)
        else:
            out.append(arg)
        i += 1
    out += [f"--{name}={json.dumps(values)}" for name, values in collected.items()]
    if words:
        out.append(f"--{positional}={' '.join(words)}")
    return out
