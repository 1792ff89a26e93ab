"""Reading a choice out of a free-form reply: option letters (multiple choice) and yes/no (POPE)."""

from __future__ import annotations

import re

CHOICE_LETTERS = "ABCDE"
# A capital A-E standing alone: not part of a word ("Apple", "BE"), possibly in brackets or
# followed by "." or ":" ("(B)", "C.", "D:"), as MVBench, MLVU and EgoSchema replies look.
_LETTER = re.compile(r"(?<![A-Za-z0-9])([A-E])(?![A-Za-z0-9])")


def parse_choice_letter(reply: str) -> str | None:
    """The first standalone option letter A–E in `reply`, or None if it names none.

    "(B) a dog" -> "B"; "The answer is C." -> "C"; "Banana" -> None. Only capitals count:
    a lower-case "a" is an article far more often than an option.
    """
    match = _LETTER.search(reply)
    return match.group(1) if match else None


def parse_yes_no(reply: str) -> str:
    """POPE's reading of a reply, as LLaVA's `eval_pope.py` does it: only the first sentence
    counts; it means "no" if it contains the word "no", "No" or "not", and "yes" otherwise."""
    first = reply.split(".")[0] if "." in reply else reply
    words = first.replace(",", "").split(" ")
    return "no" if any(word in ("No", "no", "not") for word in words) else "yes"
