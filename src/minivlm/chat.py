"""`minivlm chat`: talk to a model about images and videos, one-shot or in a multi-turn REPL.

A `ChatSession` keeps the conversation (turns and their media) and answers with the
model's batched generation, streaming text as tokens are chosen. Media given before a
question are attached to that question (`<image>`/`<video>` tags in front of its text).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import torch

from minivlm.model.conversation import CachedConversation
from minivlm.model.vlm import MiniVLM
from minivlm.processing.processor import IMAGE_TAG, VIDEO_TAG, Media, Processor
from minivlm.processing.templates import Turn
from minivlm.processing.video import load_video

HELP = "commands: /image PATH, /video PATH, /reset, /quit (or Ctrl-D); anything else is a question"
PROMPT = "you> "
ANSWER = "model> "


class TextStreamer:
    """Prints the text of one sample's tokens as they come, up to the end-of-turn token."""

    def __init__(self, processor: Processor, out: TextIO) -> None:
        self.processor = processor
        self.out = out
        self.tokens: list[int] = []
        self.printed = ""
        self.done = False

    def put(self, tokens: torch.Tensor) -> None:
        if self.done:
            return
        token = int(tokens[0])
        if token == self.processor.eos_token_id:
            self.done = True
            return
        self.tokens.append(token)
        text = self.processor.decode(self.tokens)
        # Decoding can revise the tail (spaces, multi-byte pieces): print only what extends the printed text.
        if text.startswith(self.printed):
            self.out.write(text[len(self.printed) :] if self.printed else text)
            self.printed = text
            self.out.flush()

    def end(self) -> None:
        self.out.write("\n")
        self.out.flush()


class ChatSession:
    """A conversation with a model: `ask` answers (and remembers) one question."""

    def __init__(
        self,
        model: MiniVLM,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        out: TextIO = sys.stdout,
    ) -> None:
        if model.processor is None:
            raise ValueError("the model has no processor (tokenizer and template); export it with one")
        self.model = model
        self.processor = model.processor
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.out = out
        # Later turns on the same image reuse the earlier turns' work (see minivlm.model.conversation).
        self.conversation = CachedConversation(model)
        self.reset()

    def reset(self) -> None:
        """Forgets every turn and every image or video."""
        self.turns: list[Turn] = []
        self.media: list[Media] = []
        self.pending: list[tuple[str, Media]] = []
        self.conversation.reset()

    def add_image(self, path: str | Path) -> None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"image {path} does not exist")
        self.pending.append((IMAGE_TAG, str(path)))

    def add_video(self, path: str | Path) -> None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"video {path} does not exist")
        self.pending.append((VIDEO_TAG, load_video(path)))

    def ask(self, question: str) -> str:
        """Streams the answer to `question` (with the media added since the last question) and returns it."""
        text = " ".join([tag for tag, _ in self.pending] + [question])
        turns = [*self.turns, Turn("user", text)]
        media = [*self.media, *(item for _, item in self.pending)]
        device = next(self.model.parameters()).device
        batch = self.processor([turns], [media], add_generation_prompt=True).to(device)
        streamer = TextStreamer(self.processor, self.out)
        tokens = self.conversation.generate(
            batch,
            max_new_tokens=self.max_new_tokens,
            eos_token_id=self.processor.eos_token_id,
            pad_token_id=self.processor.tokenizer.pad_token_id,
            temperature=self.temperature,
            top_p=self.top_p,
            generator=self.generator,
            streamer=streamer,
        ).tokens
        answer = self.processor.decode(tokens[0])
        self.turns = [*turns, Turn("assistant", answer)]
        self.media = media
        self.pending = []
        return answer


def repl(session: ChatSession, read: Callable[[str], str] = input) -> None:
    """The interactive loop: questions and /commands until /quit or end of input."""
    out = session.out
    out.write(HELP + "\n")
    while True:
        try:
            line = read(PROMPT).strip()
        except EOFError:
            out.write("\n")
            return
        if not line:
            continue
        command, _, argument = line.partition(" ")
        try:
            if command == "/quit":
                return
            if command == "/reset":
                session.reset()
                out.write("(conversation cleared)\n")
            elif command in ("/image", "/video"):
                (session.add_image if command == "/image" else session.add_video)(argument.strip())
                out.write(f"({command[1:]} {argument.strip()} added to the next question)\n")
            elif command.startswith("/"):
                out.write(f"unknown command {command}; {HELP}\n")
            else:
                out.write(ANSWER)
                out.flush()
                session.ask(line)
        except (FileNotFoundError, ValueError, RuntimeError) as error:
            out.write(f"error: {error}\n")
        out.flush()


def run_chat(
    model: str,
    images: list[str],
    video: str | None,
    prompt: str | None,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None,
    device: str,
) -> None:
    """`minivlm chat`: one answer when a prompt is given, otherwise the REPL."""
    session = ChatSession(
        MiniVLM.from_pretrained(model, device=device), max_new_tokens, temperature, top_p, seed, out=sys.stdout
    )
    for image in images:
        session.add_image(image)
    if video is not None:
        session.add_video(video)
    if prompt is not None:
        session.ask(prompt)
    else:
        repl(session)
