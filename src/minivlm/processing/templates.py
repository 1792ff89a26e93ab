"""Chat templates: how a conversation becomes one string, and which characters of it are trained.

A template renders a whole conversation to text once and says, by character spans, where
the trained text is (each assistant answer and its end-of-turn marker). The Processor then
tokenises that text in one go and derives labels and the pre-fusion mask from the tokens'
character offsets. Tokenising pieces one by one would not give the same ids: SentencePiece
and Metaspace tokenizers start every separately tokenised piece with a word boundary, so
`"ASSISTANT:"` + `" yes"` differs from `"ASSISTANT: yes"`.

Three kinds, all saved with a model as their own content (not by name), so a custom
template loads back exactly:

- `MarkerTemplate`: fixed role markers (the built-in `shapes`, LLaVA-1.5's `vicuna_v1`,
  `llama3`);
- `PlainTemplate`: LLaVA's stage-1 captioning format (media tags, then the caption);
- `JinjaTemplate`: a tokenizer's own `chat_template` (Llama-3.1, Qwen2, ...).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

Role = Literal["user", "assistant"]
MEDIA_TAGS = ("<image>", "<video>")
# `get_template` name that means "the tokenizer's own Jinja chat_template".
TOKENIZER_TEMPLATE = "tokenizer"


@dataclass(frozen=True)
class Turn:
    """One message. `<image>` / `<video>` in a user turn's text mark where media go."""

    role: Role
    text: str


@dataclass(frozen=True)
class Rendered:
    """A conversation as text, plus the character spans `[start, end)` that are trained on
    (assistant answers and their end-of-turn markers), in order."""

    text: str
    trained: tuple[tuple[int, int], ...]


def check_turns(turns: list[Turn], add_generation_prompt: bool) -> None:
    """Turns alternate user, assistant, ...; training ends on an answer, generation on a question."""
    if not turns:
        raise ValueError("a conversation needs at least one turn")
    for i, turn in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if turn.role != expected:
            raise ValueError(f"turn {i} has role {turn.role!r}; turns must alternate user, assistant, user, ...")
        if turn.role == "assistant" and any(tag in turn.text for tag in MEDIA_TAGS):
            raise ValueError(f"turn {i}: a media tag in an assistant turn; media go in user turns")
    if add_generation_prompt and turns[-1].role != "user":
        raise ValueError("add_generation_prompt needs a conversation that ends on a user turn")
    if not add_generation_prompt and turns[-1].role != "assistant":
        raise ValueError("a training conversation must end on an assistant turn")


class ChatTemplate(ABC):
    """Renders conversations; `to_dict()` / `template_from_dict()` save and restore it exactly."""

    name: str

    @abstractmethod
    def render(self, turns: list[Turn], add_generation_prompt: bool = False) -> Rendered:
        """The conversation's text and its trained spans; with `add_generation_prompt` it ends
        on the open assistant header that generation continues."""

    @property
    @abstractmethod
    def end_of_turn(self) -> str:
        """The text that closes an assistant answer (its last token stops generation)."""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": type(self).__name__, **asdict(self)}  # type: ignore[call-overload]


@dataclass(frozen=True)
class MarkerTemplate(ChatTemplate):
    """Fixed role markers around each turn.

    Rendered: prefix, system_start + system_prompt + system_end, then for each exchange
    user_start + question + user_end + assistant_start + answer_prefix + answer + assistant_end.
    A generation prompt ends on `assistant_start`; `answer_prefix` (vicuna_v1's space after
    "ASSISTANT:") is not part of it, so the first generated token carries that space exactly
    as the trained text does.
    """

    name: str
    user_start: str
    user_end: str
    assistant_start: str
    assistant_end: str
    answer_prefix: str = ""
    prefix: str = ""
    system_prompt: str | None = None
    system_start: str = ""
    system_end: str = ""

    @property
    def end_of_turn(self) -> str:
        return self.assistant_end

    def render(self, turns: list[Turn], add_generation_prompt: bool = False) -> Rendered:
        check_turns(turns, add_generation_prompt)
        text = self.prefix
        if self.system_prompt is not None:
            text += self.system_start + self.system_prompt + self.system_end
        trained = []
        for turn in turns:
            if turn.role == "user":
                text += self.user_start + turn.text + self.user_end + self.assistant_start
            else:
                text += self.answer_prefix
                start = len(text)
                text += turn.text + self.assistant_end
                trained.append((start, len(text)))
        return Rendered(text, tuple(trained))


@dataclass(frozen=True)
class PlainTemplate(ChatTemplate):
    """LLaVA's stage-1 format: a user turn keeps only its media tags, the answer (the caption)
    follows directly and ends with `separator`; no roles, no system prompt."""

    name: str = "plain"
    separator: str = "\n"

    @property
    def end_of_turn(self) -> str:
        return self.separator

    def render(self, turns: list[Turn], add_generation_prompt: bool = False) -> Rendered:
        check_turns(turns, add_generation_prompt)
        text = ""
        trained = []
        for turn in turns:
            if turn.role == "user":
                text += "".join(chunk for chunk in split_media_tags(turn.text) if chunk in MEDIA_TAGS)
            else:
                start = len(text)
                text += turn.text + self.separator
                trained.append((start, len(text)))
        return Rendered(text, tuple(trained))


@dataclass(frozen=True)
class JinjaTemplate(ChatTemplate):
    """A Hugging Face Jinja `chat_template` (the tokenizer's own, or any source string).

    `variables` are what such templates read besides the messages (`bos_token`,
    `eos_token`, ...), captured from the tokenizer so rendering needs no tokenizer. Answer
    spans are found by rendering each prefix of the conversation: the text up to an answer
    is the rendering of the turns before it with a generation prompt, and the answer's end
    marker runs up to the rendering of the turns including it (trailing whitespace is not
    trained). A template that does not render prefixes as prefixes is refused loudly.
    """

    source: str
    name: str = "jinja"
    system_prompt: str | None = None
    variables: dict[str, str] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash((self.source, self.name, self.system_prompt, tuple(sorted(self.variables.items()))))

    def _text(self, turns: list[Turn], add_generation_prompt: bool) -> str:
        from transformers.utils.chat_template_utils import render_jinja_template

        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt is not None else []
        messages += [{"role": turn.role, "content": turn.text} for turn in turns]
        rendered, _ = render_jinja_template(
            conversations=[messages], chat_template=self.source, add_generation_prompt=add_generation_prompt,
            **self.variables,
        )
        return rendered[0]

    @property
    def end_of_turn(self) -> str:
        rendered = self.render([Turn("user", "question"), Turn("assistant", "answer")])
        start, end = rendered.trained[0]
        answer_end = rendered.text.rindex("answer", start, end) + len("answer")
        marker = rendered.text[answer_end:end]
        if not marker:
            raise ValueError(f"chat template {self.name!r} closes an answer with no end-of-turn marker")
        return marker

    def render(self, turns: list[Turn], add_generation_prompt: bool = False) -> Rendered:
        check_turns(turns, add_generation_prompt)
        text = self._text(turns, add_generation_prompt)
        trained = []
        for i, turn in enumerate(turns):
            if turn.role != "assistant":
                continue
            before = self._text(turns[:i], add_generation_prompt=True)
            through = self._text(turns[: i + 1], add_generation_prompt=False)
            if not text.startswith(before) or not text.startswith(through):
                raise ValueError(
                    f"chat template {self.name!r} does not render a conversation's beginning as a prefix of the "
                    "whole; its answer spans cannot be found"
                )
            answer = turn.text.strip()  # templates commonly trim message content
            start = text.find(answer, len(before), len(through)) if answer else len(before)
            if start < 0 or text[len(before) : start].strip():
                raise ValueError(f"chat template {self.name!r}: answer {i} is not rendered verbatim after its header")
            end = len(text[: len(through)].rstrip())
            trained.append((start, max(end, start + len(answer))))
        return Rendered(text, tuple(trained))


def split_media_tags(text: str) -> list[str]:
    """`text` cut at media tags, the tags kept as their own chunks (empty chunks dropped)."""
    chunks = [text]
    for tag in MEDIA_TAGS:
        chunks = [piece for chunk in chunks for piece in _split_keep(chunk, tag)]
    return [chunk for chunk in chunks if chunk]


def _split_keep(text: str, tag: str) -> list[str]:
    parts = text.split(tag)
    out = [parts[0]]
    for part in parts[1:]:
        out += [tag, part]
    return out


LLAMA3_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)

VICUNA_SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

TEMPLATES: dict[str, ChatTemplate] = {
    "shapes": MarkerTemplate(
        name="shapes",
        user_start="<|user|> ",
        user_end=" <|end|> ",
        assistant_start="<|assistant|> ",
        assistant_end=" <|end|>",
    ),
    "llama3": MarkerTemplate(
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
    # LLaVA-1.5's conversation format ("vicuna_v1"): "<s>SYSTEM USER: q ASSISTANT: a</s>USER: ..."
    # and a generation prompt ending in "ASSISTANT:", as the release builds them.
    "vicuna_v1": MarkerTemplate(
        name="vicuna_v1",
        prefix="<s>",
        system_prompt=VICUNA_SYSTEM_PROMPT,
        system_end=" ",
        user_start="USER: ",
        user_end=" ",
        assistant_start="ASSISTANT:",
        answer_prefix=" ",
        assistant_end="</s>",
    ),
    "plain": PlainTemplate(),
}

_KINDS: dict[str, type[ChatTemplate]] = {
    "MarkerTemplate": MarkerTemplate, "PlainTemplate": PlainTemplate, "JinjaTemplate": JinjaTemplate,
}
_UNSET: Any = object()


def get_template(name: str, tokenizer: Any = None, system_prompt: str | None = _UNSET) -> ChatTemplate:
    """A chat template by name: a built-in (`shapes`, `vicuna_v1`, `llama3`, `plain`),
    `"tokenizer"` for the tokenizer's own Jinja `chat_template`, or a path to a `.jinja` file.
    `system_prompt` replaces the template's default (None removes it)."""
    if name in TEMPLATES:
        template = TEMPLATES[name]
    elif name == TOKENIZER_TEMPLATE:
        source = getattr(tokenizer, "chat_template", None)
        if not isinstance(source, str):
            raise ValueError("template 'tokenizer' needs a tokenizer with a chat_template; this one has none")
        template = JinjaTemplate(source, name="tokenizer", variables=_special_tokens(tokenizer))
    elif name.endswith(".jinja"):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"chat template file {name} does not exist")
        template = JinjaTemplate(path.read_text(), name=path.stem, variables=_special_tokens(tokenizer))
    else:
        known = ", ".join([*sorted(TEMPLATES), TOKENIZER_TEMPLATE])
        raise KeyError(f"unknown chat template {name!r}; known: {known}, or a path to a .jinja file")
    if system_prompt is not _UNSET:
        if not any(f.name == "system_prompt" for f in fields(template)):  # type: ignore[arg-type]
            raise ValueError(f"chat template {template.name!r} has no system prompt to set")
        template = replace(template, system_prompt=system_prompt)  # type: ignore[type-var]
    return template


def _special_tokens(tokenizer: Any) -> dict[str, str]:
    if tokenizer is None:
        return {}
    names = ("bos_token", "eos_token", "unk_token", "pad_token")
    return {name: str(getattr(tokenizer, name)) for name in names if getattr(tokenizer, name, None) is not None}


def template_from_dict(config: dict[str, Any] | str) -> ChatTemplate:
    """Rebuilds a template saved by `to_dict()` (a bare string is a built-in name, as older
    model directories stored it)."""
    if isinstance(config, str):
        return get_template(config)
    config = dict(config)
    kind = config.pop("kind", None)
    if kind not in _KINDS:
        raise ValueError(f"unknown chat template kind {kind!r}; known: {', '.join(_KINDS)}")
    return _KINDS[kind](**config)
