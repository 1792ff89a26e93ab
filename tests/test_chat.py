"""`minivlm chat` in a real terminal (tmux) on an exported model whose answers are known.

The model is a tiny MiniVLM trained in a few seconds to answer two questions about two
images (the answers differ between the images, so it has to look): the right word on the
terminal can only come from the image the chat was given.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shapes_processor, tiny_vlm
from minivlm.chat import ChatSession
from minivlm.cli import main
from minivlm.hub.export import export_model
from minivlm.processing.templates import Turn

COLOUR = "What colour is the shape at the top left ?"
COUNT = "How many red shapes are there ?"
# image name -> (top-left colour, answer to COLOUR, answer to COUNT)
IMAGES = {"red.png": ((255, 0, 0), "red", "one"), "blue.png": ((0, 0, 255), "blue", "zero")}


def conversations() -> list[tuple[list[Turn], str]]:
    data = []
    for name, (_, colour, count) in IMAGES.items():
        data.append(([Turn("user", f"<image> {COLOUR}"), Turn("assistant", colour)], name))
        data.append(([Turn("user", f"<image> {COLOUR}"), Turn("assistant", colour), Turn("user", COUNT),
                      Turn("assistant", count)], name))
    return data


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("chat")
    for name, (rgb, _, _) in IMAGES.items():
        pixels = np.zeros((32, 32, 3), dtype=np.uint8)
        pixels[2:14, 2:14] = rgb
        Image.fromarray(pixels).save(root / name)
    model = tiny_vlm(seed=0)
    model.processor = shapes_processor(model)
    data = conversations()
    batch = model.processor([turns for turns, _ in data], [[root / name] for _, name in data])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead (about 40 ms a step, 120 steps)
    try:
        for _ in range(400):
            loss = model(batch).loss
            if loss.item() < 0.01:
                break
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    export_model(model, root / "model")
    return root


def test_session_answers_from_the_image_and_remembers_turns(exported):
    from minivlm import MiniVLM

    session = ChatSession(MiniVLM.from_pretrained(exported / "model"), max_new_tokens=4, out=open(os.devnull, "w"))
    for name, (_, colour, count) in IMAGES.items():
        session.reset()
        session.add_image(exported / name)
        assert session.ask(COLOUR) == colour
        assert session.ask(COUNT) == count
        assert [t.role for t in session.turns] == ["user", "assistant", "user", "assistant"] and len(session.media) == 1
    session.reset()
    assert session.turns == [] and session.media == [] and session.pending == []


def test_one_shot_chat_prints_the_answer(exported, capsys):
    main(["chat", "--model", str(exported / "model"), "--image", str(exported / "blue.png"), "--max-new-tokens", "4",
          COLOUR])
    assert capsys.readouterr().out.strip() == "blue"


class Terminal:
    """A tmux session on a private socket running one command."""

    def __init__(self, command: list[str]) -> None:
        self.socket = f"minivlm-test-{os.getpid()}"
        # A server of our own inherits this environment (PYTHONPATH, HF_HUB_OFFLINE) and working directory.
        subprocess.run(["tmux", "-L", self.socket, "new-session", "-d", "-s", "chat", "-x", "160", "-y", "50",
                        "-c", os.getcwd(), " ".join(command)], check=True, env=os.environ)
        subprocess.run(["tmux", "-L", self.socket, "set-option", "-t", "chat", "remain-on-exit", "on"], check=True)

    def send(self, line: str) -> None:
        subprocess.run(["tmux", "-L", self.socket, "send-keys", "-t", "chat", "-l", line], check=True)
        subprocess.run(["tmux", "-L", self.socket, "send-keys", "-t", "chat", "Enter"], check=True)

    def screen(self) -> str:
        return subprocess.run(["tmux", "-L", self.socket, "capture-pane", "-p", "-t", "chat", "-S", "-"],
                              capture_output=True, text=True).stdout

    def wait_for(self, predicate, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if predicate(screen):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"terminal never showed what was expected; it shows:\n{self.screen()}")

    def exited(self) -> bool:
        panes = subprocess.run(["tmux", "-L", self.socket, "list-panes", "-t", "chat", "-F", "#{pane_dead}"],
                               capture_output=True, text=True).stdout
        return panes.strip() == "1"

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


def answers(screen: str) -> list[str]:
    return [line.removeprefix("model> ").strip() for line in screen.splitlines() if line.startswith("model> ")]


def prompts(screen: str) -> int:
    return sum(line.startswith("you>") for line in screen.splitlines())  # tmux drops trailing spaces


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux to drive a real terminal")
def test_interactive_chat_in_a_terminal(exported):
    terminal = Terminal([sys.executable, "-m", "minivlm", "chat", "--model", str(exported / "model"),
                         "--max-new-tokens", "4"])
    try:
        terminal.wait_for(lambda s: prompts(s) == 1)
        terminal.send(f"/image {exported / 'red.png'}")
        terminal.wait_for(lambda s: f"(image {exported / 'red.png'} added" in s and prompts(s) == 2)
        terminal.send(COLOUR)
        assert answers(terminal.wait_for(lambda s: prompts(s) == 3)) == ["red"]
        terminal.send(COUNT)  # second turn: same image, answer needs the first turn's image
        assert answers(terminal.wait_for(lambda s: prompts(s) == 4)) == ["red", "one"]
        terminal.send("/reset")
        terminal.wait_for(lambda s: "(conversation cleared)" in s and prompts(s) == 5)
        terminal.send(f"/image {exported / 'blue.png'}")
        terminal.wait_for(lambda s: prompts(s) == 6)
        terminal.send(COLOUR)
        assert answers(terminal.wait_for(lambda s: prompts(s) == 7)) == ["red", "one", "blue"]
        terminal.send("/image nowhere.png")
        assert "error: image nowhere.png does not exist" in terminal.wait_for(lambda s: prompts(s) == 8)
        terminal.send("/quit")
        terminal.wait_for(lambda s: terminal.exited(), timeout=120)
    finally:
        terminal.close()


def test_video_and_images_reach_the_model_in_tag_order(exported, tmp_path, monkeypatch):
    import av

    from minivlm import MiniVLM

    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for i in range(12):  # 3 s at 4 fps: 3 frames at 1 fps
            image = np.full((32, 32, 3), 20 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    model = MiniVLM.from_pretrained(exported / "model")
    seen = []
    session = ChatSession(model, max_new_tokens=2, out=open(os.devnull, "w"))
    generate = session.conversation.generate
    monkeypatch.setattr(session.conversation, "generate", lambda batch, **kw: seen.append(batch) or generate(batch, **kw))
    session.add_video(path)
    session.add_image(exported / "red.png")
    session.ask(COLOUR)
    session.ask(COUNT)
    first, second = seen
    assert first.kinds == ("video", "image") and first.media_passes.tolist() == [3, 1]
    assert second.kinds == ("video", "image")  # the second turn still carries the first turn's media
    assert int((first.input_ids == -200).sum()) == 2
