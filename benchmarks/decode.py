"""minivlm against transformers' `LlavaForConditionalGeneration` on the same weights: time to
first token and decode tokens/s, batch 1 and batch 8 (prompts of different lengths, left
padding on the transformers side), greedy, tokens compared, alternating in one run.

A random LLaVA-1.5-shaped model is saved by transformers in a temporary directory and converted
with `minivlm.hub.convert.convert_hf_llava`; transformers loads the saved model, minivlm the
converted one. Sizes (random weights, float32, SDPA attention in both): an 8-layer Llama of
width 512 (8 heads, MLP 1376, vocabulary 32000) and a 4-layer CLIP-shaped encoder at 336 px
(14 px patches: 576 vision tokens, width 256, features from layer -2), one image per prompt.
The LLM's weights are drawn with std 0.08 instead of transformers' 0.02: with 0.02 every
sample repeats one to three tokens, which makes "identical tokens" a weak comparison.

Both run their default dynamic KV cache; minivlm's static-cache / `torch.compile` decoding path
is not implemented, so it is not measured.

    PYTHONPATH=src .venv/bin/python benchmarks/decode.py [--rounds 5] [--new-tokens 32] [--threads 1]

Times come from a streamer on the same call: the first token's arrival is the time to first
token, and the rest of the call over the (new tokens - 1) later steps gives the decode rate.
Prints a table and writes benchmarks/results/decode.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from minivlm.data.synthetic import build_shapes_tokenizer
from minivlm.hub.convert.hf_llava import convert_hf_llava
from minivlm.model import MiniVLM
from minivlm.processing.batch import PLACEHOLDER_ID, Batch

VOCAB = 32000
IMAGE_TOKEN = VOCAB - 1  # inside the LLM's vocabulary, as transformers' LLaVA requires
PAD = 0
CONFIG = dict(
    vision_config=dict(model_type="clip_vision_model", hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                       num_attention_heads=4, image_size=336, patch_size=14),
    text_config=dict(model_type="llama", vocab_size=VOCAB, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                     num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048,
                     initializer_range=0.08),
    vision_feature_layer=-2, vision_feature_select_strategy="default", image_token_index=IMAGE_TOKEN,
)
PROMPTS = {1: [40], 8: [12, 40, 24, 64, 8, 33, 50, 17]}  # text tokens after the image, per sample


class Clock:
    """A streamer that notes when the first generated token arrives (transformers first
    `put`s the prompt itself; `skip` says how many puts to ignore)."""

    def __init__(self, skip: int) -> None:
        self.skip, self.first = skip, None

    def put(self, tokens: torch.Tensor) -> None:
        if self.skip:
            self.skip -= 1
        elif self.first is None:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def make_inputs(model: MiniVLM, batch_size: int) -> tuple[Batch, dict]:
    """The same prompts for both: minivlm's right-padded Batch with one placeholder per image,
    and transformers' left-padded ids with the image token repeated once per vision token."""
    generator = torch.Generator().manual_seed(batch_size)
    lengths = PROMPTS[batch_size]
    texts = [torch.randint(1, IMAGE_TOKEN, (n,), generator=generator) for n in lengths]
    pixels = torch.randint(0, 256, (batch_size, 3, 336, 336), generator=generator, dtype=torch.uint8)
    width = 1 + max(lengths)
    ids = torch.full((batch_size, width), PAD)
    for row, text in enumerate(texts):
        ids[row, : 1 + len(text)] = torch.cat([torch.tensor([PLACEHOLDER_ID]), text])
    mask = torch.arange(width)[None, :] < torch.tensor([1 + n for n in lengths])[:, None]
    batch = Batch(input_ids=ids, attention_mask=mask, prefusion_mask=mask & (ids != PLACEHOLDER_ID),
                  pixel_values=pixels, media_passes=torch.ones(batch_size, dtype=torch.long))
    hf_width = model.tokens_per_image + max(lengths)
    hf_ids = torch.full((batch_size, hf_width), PAD)
    hf_mask = torch.zeros(batch_size, hf_width, dtype=torch.long)
    for row, text in enumerate(texts):
        sample = torch.cat([torch.full((model.tokens_per_image,), IMAGE_TOKEN), text])
        hf_ids[row, hf_width - len(sample):] = sample
        hf_mask[row, hf_width - len(sample):] = 1
    hf_inputs = dict(input_ids=hf_ids, attention_mask=hf_mask, pixel_values=model.encoder_input(pixels))
    return batch, hf_inputs


def run_minivlm(model: MiniVLM, batch: Batch, new_tokens: int) -> tuple[float, float, torch.Tensor]:
    clock = Clock(skip=0)
    start = time.perf_counter()
    tokens = model.generate(batch, max_new_tokens=new_tokens, streamer=clock)
    return clock.first - start, time.perf_counter() - clock.first, tokens


def run_transformers(hf: LlavaForConditionalGeneration, inputs: dict, new_tokens: int) -> tuple[float, float, torch.Tensor]:
    clock = Clock(skip=1)
    start = time.perf_counter()
    out = hf.generate(**inputs, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                      pad_token_id=PAD, streamer=clock)
    return clock.first - start, time.perf_counter() - clock.first, out[:, inputs["input_ids"].shape[1]:]


def build_models(directory: Path) -> tuple[MiniVLM, LlavaForConditionalGeneration]:
    torch.manual_seed(0)
    LlavaForConditionalGeneration(LlavaConfig(**CONFIG)).save_pretrained(directory / "hf")
    build_shapes_tokenizer().save_pretrained(directory / "hf")
    convert_hf_llava(str(directory / "hf"), str(directory / "minivlm"), template="shapes")
    hf = LlavaForConditionalGeneration.from_pretrained(directory / "hf", attn_implementation="sdpa").eval()
    hf.generation_config.eos_token_id = None  # random weights: run every sample to the full length on both sides
    return MiniVLM.from_pretrained(directory / "minivlm").eval(), hf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/decode.json")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        model, hf = build_models(Path(tmp))
        runners = {"minivlm": lambda inputs, n: run_minivlm(model, inputs[0], n),
                   "transformers": lambda inputs, n: run_transformers(hf, inputs[1], n)}
        inputs = {size: make_inputs(model, size) for size in PROMPTS}
        for name, runner in runners.items():  # warm-up: one short call each
            runner(inputs[1], 2)
        samples = {(size, name): {"ttft": [], "decode": []} for size in PROMPTS for name in runners}
        tokens = {}
        for round_ in range(options.rounds):
            order = list(runners) if round_ % 2 == 0 else list(reversed(runners))
            for size in PROMPTS:
                for name in order:
                    ttft, rest, out = runners[name](inputs[size], options.new_tokens)
                    samples[size, name]["ttft"].append(ttft * 1e3)
                    samples[size, name]["decode"].append(size * (out.shape[1] - 1) / rest)
                    tokens[size, name] = out.tolist()
    rows = []
    for (size, name), values in samples.items():
        rows.append({
            "batch": size, "implementation": name, "prompt_text_tokens": PROMPTS[size],
            "ttft_ms_median": statistics.median(values["ttft"]), "ttft_ms_min": min(values["ttft"]),
            "ttft_ms_max": max(values["ttft"]),
            "decode_tokens_per_s_median": statistics.median(values["decode"]),
            "decode_tokens_per_s_min": min(values["decode"]), "decode_tokens_per_s_max": max(values["decode"]),
            "tokens_identical_to_transformers": tokens[size, name] == tokens[size, "transformers"],
            "distinct_tokens": len({token for row in tokens[size, name] for token in row}),
        })
    print(f"| batch | implementation | TTFT median ms | min | max | decode tokens/s median | min | max | tokens = transformers | distinct tokens |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['batch']} | {row['implementation']} | {row['ttft_ms_median']:.0f} | {row['ttft_ms_min']:.0f} | "
              f"{row['ttft_ms_max']:.0f} | {row['decode_tokens_per_s_median']:.1f} | {row['decode_tokens_per_s_min']:.1f} | "
              f"{row['decode_tokens_per_s_max']:.1f} | {row['tokens_identical_to_transformers']} | {row['distinct_tokens']} |")
    result = {"torch": torch.__version__, "machine": platform.machine(), "threads": options.threads,
              "rounds": options.rounds, "new_tokens": options.new_tokens, "config": CONFIG, "rows": rows,
              "tokens": {f"{name} batch {size}": value for (size, name), value in tokens.items()}}
    Path(options.out).parent.mkdir(parents=True, exist_ok=True)
    Path(options.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
