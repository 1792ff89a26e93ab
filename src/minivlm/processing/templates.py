"""Chat templates: the role markers around each turn of a conversation.

A template renders a conversation as pieces of text, each tagged with whether it is
trained on (assistant answers and their end-of-turn marker) and whether it takes part in
pre-fusion (everything but the answers). Pieces are tokenised one by one, so labels and
pre-fusion masks fall exactly on token boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["user", "assistant"]


@dataclass(frozen=True)
class Turn:
    """One message. `<image>` in a user turn's text marks where an image goes."""

    role: Role
    text: str


@dataclass(frozen=True)
class Piece:
    """A run of text and how it is used: `train` (loss on it) and `fuse` (seen by pre-fusion)."""

    text: str
    train: bool
    fuse: bool


@dataclass(frozen=True)
class ChatTemplate:
    """Role markers. The assistant header ends the prompt; the answer and `assistant_end` are trained."""

    name: str
    user_start: str
    user_end: str
    assistant_start: str
    assistant_end: str
    prefix: str = ""
    system_prompt: str | None = None
    system_start: str = ""
    system_end: str = ""

    def render(self, turns: list[Turn], add_generation_prompt: bool = False) -> list[Piece]:
        """Pieces for `turns`; with `add_generation_prompt`, ends on an open assistant header."""
        if not turns:
            raise ValueError("a conversation needs at least one turn")
        pieces = [Piece(self.prefix, train=False, fuse=True)] if self.prefix else []
        if self.system_prompt is not None:
            pieces.append(Piece(self.system_start + self.system_prompt + self.system_end, train=False, fuse=True))
        for i, turn in enumerate(turns):
            expected = "user" if i % 2 == 0 else "assistant"
            if turn.role != expected:
                raise ValueError(f"turn {i} has role {turn.role!r}; turns must alternate user, assistant, user, ...")
            if turn.role == "user":
                pieces.append(Piece(self.user_start + turn.text + self.user_end + self.assistant_start, False, True))
            else:
                pieces.append(Piece(turn.text + self.assistant_end, train=True, fuse=False))
        if add_generation_prompt and turns[-1].role != "user":
            raise ValueError("add_generation_prompt needs a conversation that ends on a user turn")
        if not add_generation_prompt and turns[-1].role != "assistant":
            raise ValueError("a training conversation must end on an assistant turn")
        return pieces


LLAMA3_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)

VICUNA_SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

TEMPLATES: dict[str, ChatTemplate] = {
    "shapes": ChatTemplate(
        name="shapes",
        user_start="<|user|> ",
        user_end=" <|end|> ",
        assistant_start="<|assistant|> ",
        assistant_end=" <|end|>",
    ),
    "llama3": ChatTemplate(
        name="llama3",
        prefix="<|begin_of_text|>",
        system_prompt=LLAMA3_SYSTEM_PROMPT,
        system_start="<|start_header_id|>system<|end_header_id|>\n\n",
        system_end="<|eot_id|>",
        user_start="<|start_header_id|>user<|end_header_id|>\n\n",
        user_end="<|eot_id|>",
        assistant_start="<|start_header_id|>assistant<|end_header_id|>\n\n",
        assistant_end="<|eot_id|>",
    ),
    # LLaVA-1.5's conversation format ("vicuna_v1").
    "vicuna_v1": ChatTemplate(
        name="vicuna_v1",
        prefix="<s>",
        system_prompt=VICUNA_SYSTEM_PROMPT,
        system_end=" ",
        user_start="USER: ",
        user_end=" ",
        assistant_start="ASSISTANT: ",
        assistant_end="</s>",
    ),
}


def get_template(name: str) -> ChatTemplate:
    """The built-in template called exactly `name`."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise KeyError(f"unknown chat template {name!r}; known: {', '.join(sorted(TEMPLATES))}") from None
