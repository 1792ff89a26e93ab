"""Multi-turn chat: time to first token of the second turn on the same image, with the caches of
the first turn (`CachedConversation`, what `minivlm chat` uses) and recomputed from scratch
(`MiniVLM.generate` over the whole conversation, as the LLaVA-Mini release does every turn).

The latency configuration of `latency.py` (LLaVA-Mini: 1 token + 4 pre-fusion layers, a 32-layer
Llama of width 512, a 24-layer CLIP-shaped encoder at 336 px, random weights, float32, batch 1):
turn 1 is the image and a 40-token prompt, answered with 8 tokens; turn 2 adds those 8 answer
tokens (not fused) and a 20-token question (fused) to the same conversation.

    .venv/bin/python benchmarks/chat_turns.py [--repeats 5] [--warmup 1] [--threads N]

Prints a table and writes benchmarks/results/chat_turns.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import LLM, PROMPT_TOKENS, build_minivlm, make_inputs  # noqa: E402

from minivlm.model.conversation import CachedConversation  # noqa: E402
from minivlm.processing.batch import Batch  # noqa: E402

ANSWER_TOKENS = 8
QUESTION_TOKENS = 20


class FirstTokenClock:
    """A streamer that notes when the first token arrives."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None

    def put(self, tokens: torch.Tensor) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass

    @property
    def ms(self) -> float:
        return (self.first - self.start) * 1000


def second_turn(first: Batch, answer: torch.Tensor) -> Batch:
    """The first turn's prompt, its answer (not fused) and a new question (fused)."""
    question = torch.randint(1, LLM["vocab_size"], (1, QUESTION_TOKENS), generator=torch.Generator().manual_seed(2))
    ids = torch.cat([first.input_ids, answer, question], dim=1)
    fuse = torch.cat([first.prefusion_mask, torch.zeros_like(answer, dtype=torch.bool), torch.ones_like(question, dtype=torch.bool)], dim=1)
    return Batch(
        input_ids=ids, attention_mask=torch.ones_like(ids, dtype=torch.bool), prefusion_mask=fuse,
        pixel_values=first.pixel_values, media_passes=first.media_passes,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--out", default="benchmarks/results/chat_turns.json")
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)

    model = build_minivlm(mini=True)
    first, _, _ = make_inputs(model)
    times: dict[str, list[float]] = {"turn 1": [], "turn 2 cached": [], "turn 2 from scratch": []}
    identical = True
    for repeat in range(options.warmup + options.repeats):
        conversation = CachedConversation(model)
        clock = FirstTokenClock()
        answer = conversation.generate(first, max_new_tokens=ANSWER_TOKENS, streamer=clock).tokens
        turn1 = clock.ms
        batch = second_turn(first, answer)
        clock = FirstTokenClock()
        cached = conversation.generate(batch, max_new_tokens=1, streamer=clock).tokens
        turn2 = clock.ms
        clock = FirstTokenClock()
        scratch = model.generate(batch, max_new_tokens=1, streamer=clock)
        identical &= torch.equal(cached, scratch)
        if repeat >= options.warmup:
            for key, ms in zip(times, (turn1, turn2, clock.ms)):
                times[key].append(ms)

    rows = [
        {"turn": key, "ttft_ms": round(statistics.median(ts), 1), "min_ms": round(min(ts), 1), "max_ms": round(max(ts), 1)}
        for key, ts in times.items()
    ]
    by = {r["turn"]: r["ttft_ms"] for r in rows}
    ratio = round(by["turn 2 cached"] / by["turn 1"], 3)
    print(f"\n{'turn':<22} {'TTFT ms':>9} {'min':>8} {'max':>8}")
    for r in rows:
        print(f"{r['turn']:<22} {r['ttft_ms']:>9.1f} {r['min_ms']:>8.1f} {r['max_ms']:>8.1f}")
    print(f"turn 2 cached / turn 1: {ratio:.3f}; cached turn 2 tokens equal recomputing: {identical}")
    result = {
        "config": {
            "model": "latency.py mini: 1 token + 4 pre-fusion layers, 32-layer Llama width 512, 24-layer CLIP 336 px",
            "prompt_tokens": PROMPT_TOKENS, "answer_tokens": ANSWER_TOKENS, "question_tokens": QUESTION_TOKENS,
            "repeats": options.repeats, "warmup": options.warmup, "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        },
        "rows": rows, "turn2_over_turn1": ratio, "identical_tokens": identical,
    }
    Path(options.out).parent.mkdir(parents=True, exist_ok=True)
    Path(options.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
