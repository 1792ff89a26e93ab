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

transformers runs its default dynamic KV cache. minivlm runs three ways: its default (dynamic
cache), `cache="static"`, and `cache="static", compile=True`; a fourth minivlm row is the
default path on a second copy of the converted model with `decode_column_major = False`, so
every weight stays row-major as in transformers (`minivlm.llms.layout`): what the decoding
layout alone buys, in the same run.
The compiled path is warmed up by one full call per batch size before the timed rounds; that
call's wall time is reported apart ("first call", compilation included), and the timed rounds exclude it. Inductor's
on-disk cache starts empty (`TORCHINDUCTOR_CACHE_DIR` in the temporary directory), so the
first call compiles from scratch.

    PYTHONPATH=src .venv/bin/python benchmarks/decode.py [--rounds 5] [--new-tokens 32] [--threads 1]

Times come from a streamer on the same call: the first token's arrival is the time to first
token, and the rest of the call over the (new tokens - 1) later steps gives the decode rate.
The implementations alternate within each round (order rotated every round); the ratios to
transformers are paired: each round's value over transformers' in the same round, the median
over rounds (the machine's load drifts between rounds more than within one).

Then, per batch size, the anatomy of one decoding step at the benchmark's cache length, timed
alternately (`--anatomy-steps` each): the LLM's linear layers alone (the same matmuls on
random activations: the weights each step must read, in minivlm's decoding layout), the same
matmuls on transformers' weight tensors (equal values, all row-major), the attention alone (SDPA over the
static cache in every layer), the uncompiled static step and the compiled one. What the
compiled step spends beyond the first two is the overhead that compiling could still remove.
Prints two tables and writes benchmarks/results/decode.json.
"""

from __future__ import annotations

import argparse
import json
import os
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
from minivlm.model.decoding import STATIC_LENGTH_MULTIPLE, compiled_decode_step, decode_step
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


MINIVLM = {"minivlm": {}, "minivlm static": {"cache": "static"},
           "minivlm static+compile": {"cache": "static", "compile": True}}
# The layout control: minivlm's default path with every weight row-major, as before the decoding layout.
ROW_MAJOR = "minivlm, row-major weights"
TWIN_LINEARS = "linear layers, transformers' weights"


def run_minivlm(model: MiniVLM, batch: Batch, new_tokens: int, **options) -> tuple[float, float, torch.Tensor]:
    clock = Clock(skip=0)
    start = time.perf_counter()
    tokens = model.generate(batch, max_new_tokens=new_tokens, streamer=clock, **options)
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


def transformers_twin(name: str, hf: LlavaForConditionalGeneration) -> torch.Tensor:
    """The transformers parameter that holds the same values as minivlm's LLM parameter `name`."""
    return hf.get_parameter("lm_head.weight" if name == "lm_head.weight" else "model.language_model." + name[6:])


def step_anatomy(
    model: MiniVLM, hf: LlavaForConditionalGeneration, batch_size: int, prompt: int, new_tokens: int, steps: int
) -> dict[str, float]:
    """Median ms of one decoding step's parts at the benchmark's static cache length (see the docstring)."""
    llm = model.llm
    config = llm.model.config
    heads, head_dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    length = -(-(prompt + new_tokens - 1) // STATIC_LENGTH_MULTIPLE) * STATIC_LENGTH_MULTIPLE
    generator = torch.Generator().manual_seed(0)
    mask = torch.ones(batch_size, length, dtype=torch.bool)
    cache = llm.static_cache(batch_size, length)
    positions = torch.arange(prompt)[None].expand(batch_size, prompt)
    llm(torch.randn(batch_size, prompt, llm.hidden_size, generator=generator), attention_mask=mask,
        position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1)
    token, step_positions = torch.zeros(batch_size, dtype=torch.long), positions[:, -1:] + 1
    named = [(name + ".weight", m.weight) for name, m in llm.model.named_modules() if isinstance(m, torch.nn.Linear)]
    linears = [weight for _, weight in named]
    twins = [transformers_twin(name, hf) for name, _ in named]
    inputs = {w.shape[1]: torch.randn(batch_size, w.shape[1], generator=generator) for w in linears}
    keys = [torch.randn(batch_size, heads, length, head_dim, generator=generator) for _ in range(2)]
    query = torch.randn(batch_size, heads, 1, head_dim, generator=generator)
    attention_mask = mask[:, None, None, :]

    def rewind() -> None:  # every step writes the same slot, so the cache never fills
        for layer in cache.layers:
            layer.cumulative_length.fill_(prompt)

    parts = {
        "linear layers": lambda: [torch.nn.functional.linear(inputs[w.shape[1]], w) for w in linears],
        TWIN_LINEARS: lambda: [torch.nn.functional.linear(inputs[w.shape[1]], w) for w in twins],
        "attention": lambda: [torch.nn.functional.scaled_dot_product_attention(query, *keys, attn_mask=attention_mask)
                              for _ in range(config.num_hidden_layers)],
        "static step": lambda: (rewind(), decode_step(llm, token, mask, step_positions, cache)),
        "compiled step": lambda: (rewind(), compiled_decode_step()(llm, token, mask, step_positions, cache)),
    }
    times = {name: [] for name in parts}
    parts["compiled step"]()  # warm-up; the generate calls compiled this shape already
    for _ in range(steps):
        for name, part in parts.items():
            start = time.perf_counter()
            part()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--anatomy-steps", type=int, default=30)
    parser.add_argument("--out", default="benchmarks/results/decode.json")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        # An empty inductor cache, so the first compiled call compiles from scratch.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor")
        model, hf = build_models(Path(tmp))
        row_major = MiniVLM.from_pretrained(Path(tmp) / "minivlm").eval()
        row_major.llm.decode_column_major = False
        runners = {name: (lambda inputs, n, kwargs=kwargs: run_minivlm(model, inputs[0], n, **kwargs))
                   for name, kwargs in MINIVLM.items()}
        runners[ROW_MAJOR] = lambda inputs, n: run_minivlm(row_major, inputs[0], n)
        runners["transformers"] = lambda inputs, n: run_transformers(hf, inputs[1], n)
        inputs = {size: make_inputs(model, size) for size in PROMPTS}
        for name, runner in runners.items():  # warm-up: one short call each
            if name != "minivlm static+compile":
                runner(inputs[1], 2)
        first_call = {}
        for size in PROMPTS:  # compiles one graph per batch size (cache length fixed by --new-tokens)
            start = time.perf_counter()
            runners["minivlm static+compile"](inputs[size], options.new_tokens)
            first_call[size] = time.perf_counter() - start
        samples = {(size, name): {"ttft": [], "decode": [], "call": []} for size in PROMPTS for name in runners}
        tokens = {}
        names = list(runners)
        for round_ in range(options.rounds):
            order = names[round_ % len(names):] + names[: round_ % len(names)]
            for size in PROMPTS:
                for name in order:
                    ttft, rest, out = runners[name](inputs[size], options.new_tokens)
                    samples[size, name]["ttft"].append(ttft * 1e3)
                    samples[size, name]["decode"].append(size * (out.shape[1] - 1) / rest)
                    samples[size, name]["call"].append(ttft + rest)
                    tokens[size, name] = out.tolist()
        anatomy = {}
        for size in PROMPTS:
            prompt = model.tokens_per_image + max(PROMPTS[size])
            anatomy[size] = step_anatomy(model, hf, size, prompt, options.new_tokens, options.anatomy_steps)
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
        if name == "minivlm static+compile":
            rows[-1]["first_call_s"] = first_call[size]
            rows[-1]["compile_s_estimate"] = first_call[size] - statistics.median(values["call"])
    for row in rows:  # paired: each round's value over transformers' in the same round, then the median
        own, reference = samples[row["batch"], row["implementation"]], samples[row["batch"], "transformers"]
        row["ttft_vs_transformers"] = statistics.median(a / b for a, b in zip(own["ttft"], reference["ttft"]))
        row["decode_vs_transformers"] = statistics.median(a / b for a, b in zip(own["decode"], reference["decode"]))
    print("| batch | implementation | TTFT median ms | min | max | decode tokens/s median | min | max | "
          "TTFT / transformers | decode / transformers | tokens = transformers | distinct tokens | first call s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        first = f"{row['first_call_s']:.1f}" if "first_call_s" in row else ""
        print(f"| {row['batch']} | {row['implementation']} | {row['ttft_ms_median']:.0f} | {row['ttft_ms_min']:.0f} | "
              f"{row['ttft_ms_max']:.0f} | {row['decode_tokens_per_s_median']:.1f} | {row['decode_tokens_per_s_min']:.1f} | "
              f"{row['decode_tokens_per_s_max']:.1f} | {row['ttft_vs_transformers']:.2f} | "
              f"{row['decode_vs_transformers']:.2f} | {row['tokens_identical_to_transformers']} | "
              f"{row['distinct_tokens']} | {first} |")
    print("\n| batch | linear layers ms | same on transformers' weights ms | attention ms | static step ms | "
          "compiled step ms | compiled beyond linear + attention |")
    print("|---|---|---|---|---|---|---|")
    for size, parts in anatomy.items():
        floor = parts["linear layers"] + parts["attention"]
        print(f"| {size} | {parts['linear layers']:.1f} | {parts[TWIN_LINEARS]:.1f} | "
              f"{parts['attention']:.1f} | {parts['static step']:.1f} | "
              f"{parts['compiled step']:.1f} | {(parts['compiled step'] - floor) / parts['compiled step']:.0%} |")
    result = {"torch": torch.__version__, "machine": platform.machine(), "threads": options.threads,
              "rounds": options.rounds, "new_tokens": options.new_tokens, "config": CONFIG, "rows": rows,
              "step_anatomy_ms": {str(size): parts for size, parts in anatomy.items()},
              "tokens": {f"{name} batch {size}": value for (size, name), value in tokens.items()}}
    Path(options.out).parent.mkdir(parents=True, exist_ok=True)
    Path(options.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
