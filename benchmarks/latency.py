"""Time to first token of the 576-token LLaVA-1.5 baseline and of LLaVA-Mini (1 token + 4
pre-fusion layers), through minivlm's public API and through plain transformers modules glued
together by hand (the naive reference), alternating in one run, with FLOPs beside the times.

Scaled-down Vicuna-7B proportions that run on a laptop CPU: a 32-layer Llama of width 512
(8 heads, MLP 1376, vocabulary 32000), a 24-layer CLIP-shaped encoder at 336 px (14 px
patches: 576 tokens, width 256), features from layer -2, a 40-token prompt, batch 1, random
weights, float32.

    .venv/bin/python benchmarks/latency.py [--repeats 10] [--warmup 2] [--threads N]

Besides the wall-clock time to first token, the baseline / Mini ratios are also given paired
(the median of each round's ratio), and each row has the CPU time the process spent on a
call (all threads; on a shared machine it is stretched less than wall time by other jobs) and
its minor page faults (freshly allocated memory touched). Prints a table and writes
benchmarks/results/latency.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPVisionConfig, CLIPVisionModel

from minivlm import (
    DecoderPreFusion, HFLanguageModel, HFVisionEncoder, IdentityCompressor, MiniVLM, MLPProjector, NoPreFusion,
    QueryCompressor,
)
from minivlm.processing.batch import PLACEHOLDER_ID, Batch
from minivlm.profiling import count_flops
from minivlm.profiling.flops import eager_attention

ENCODER = dict(
    model_type="clip_vision_model", hidden_size=256, intermediate_size=1024, num_hidden_layers=24,
    num_attention_heads=4, image_size=336, patch_size=14,
)
LLM = dict(
    model_type="llama", vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=32,
    num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048,
)
PROMPT_TOKENS = 40


def build_minivlm(mini: bool) -> MiniVLM:
    torch.manual_seed(0)
    encoder = HFVisionEncoder(config=ENCODER, select_layer=-2)
    llm = HFLanguageModel(config=LLM)
    if mini:
        compressor, prefusion = QueryCompressor(dim=256, size=1, num_heads=8), DecoderPreFusion(num_layers=4)
    else:
        compressor, prefusion = IdentityCompressor(dim=512), NoPreFusion()
    return MiniVLM(encoder, compressor, MLPProjector(256, 512), prefusion, llm).eval()


class NaiveVLM(nn.Module):
    """The same weights as a MiniVLM, run the way hand-written LLaVA(-Mini) code does it: the
    full CLIP tower with every hidden state, `hidden_states[-2]`, the release's compressor
    (`nn.MultiheadAttention`, key positions resized on every call), plain transformers decoder
    layers under a dense 4-D causal mask for pre-fusion, the LLM over [vision ; text] embeddings
    with a KV cache, argmax of the last logits. Only transformers and torch modules run here,
    on copies of the weights, so none of minivlm's own speed-ups reach this reference."""

    def __init__(self, model: MiniVLM) -> None:
        super().__init__()
        self.vision = CLIPVisionModel(CLIPVisionConfig(**{k: v for k, v in ENCODER.items() if k != "model_type"}))
        result = self.vision.load_state_dict(model.encoder.vision_model.state_dict(), strict=False)
        # minivlm keeps 23 of 24 layers and drops the post-LayerNorm; those stay random and unused here.
        unused = ("encoder.layers.23.", "post_layernorm.")
        unexpected_missing = [k for k in result.missing_keys if not k.removeprefix("vision_model.").startswith(unused)]
        if unexpected_missing or result.unexpected_keys:
            raise RuntimeError(f"weights do not line up: {unexpected_missing} {result.unexpected_keys}")
        self.vision.eval()
        # Copies, not the MiniVLM's modules: what minivlm's generate does to its own modules at
        # inference (packed linears, the decoding layout) must not reach the reference.
        self.projector = copy.deepcopy(model.projector.layers)
        self.llm = copy.deepcopy(model.llm.model)
        self.mini = isinstance(model.prefusion, DecoderPreFusion)
        if self.mini:
            self.compressor = copy.deepcopy(model.compressor)
            # Fresh layers of the LLM's class (transformers' own MLP), with pre-fusion's weights.
            layer_class, config = type(model.prefusion.layers[0]), model.prefusion.layer_config
            self.layers = nn.ModuleList(layer_class(config, layer_idx=i) for i in range(len(model.prefusion.layers)))
            self.layers.load_state_dict(model.prefusion.layers.state_dict())
            self.rotary = model.prefusion.rotary_embedding
        self.grid = model.encoder.grid

    @torch.no_grad()
    def first_token(self, pixels: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        features = self.vision(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        text = self.llm.get_input_embeddings()(text_ids)
        vision = self.projector(features)
        if not self.mini:
            embeds = torch.cat([vision, text], dim=1)
        else:
            compressed = self.projector(self.compress(features))
            hidden = torch.cat([vision, compressed, text], dim=1)
            t = hidden.shape[1]
            positions = torch.arange(t)[None]
            mask = torch.full((t, t), torch.finfo(hidden.dtype).min).triu(1)[None, None]
            rope = self.rotary(hidden, position_ids=positions)
            for layer in self.layers:
                hidden = layer(hidden, attention_mask=mask, position_ids=positions, position_embeddings=rope)
            embeds = hidden[:, vision.shape[1] :]
        logits = self.llm(inputs_embeds=embeds, use_cache=True).logits
        return logits[:, -1].argmax(dim=-1)

    def compress(self, features: torch.Tensor) -> torch.Tensor:
        """The LLaVA-Mini release's compressor, step by step."""
        c = self.compressor
        kv = c.ln_kv(features)
        key_pe = c.resized_pos_embed(self.grid)
        query = (c.ln_q(c.query) + c.pos_embed).expand(features.shape[0], -1, -1)
        return c.attn(query, kv + key_pe, kv)[0]


def make_inputs(model: MiniVLM) -> tuple[Batch, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(1, 3, 336, 336, generator=generator)
    text_ids = torch.randint(1, LLM["vocab_size"], (1, PROMPT_TOKENS), generator=generator)
    ids = torch.cat([torch.tensor([[PLACEHOLDER_ID]]), text_ids], dim=1)
    batch = Batch(
        input_ids=ids, attention_mask=torch.ones_like(ids, dtype=torch.bool), prefusion_mask=ids != PLACEHOLDER_ID,
        pixel_values=pixels, media_passes=torch.tensor([1]),
    )
    return batch, pixels, text_ids


def timed(run) -> tuple[float, float, int, torch.Tensor]:
    """Wall-clock milliseconds, CPU milliseconds of this process (all threads: unlike wall time,
    not stretched while other jobs hold the cores), minor page faults (fresh memory touched)
    and the output of one call."""
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    cpu, start = time.process_time(), time.perf_counter()
    out = run()
    elapsed, cpu = (time.perf_counter() - start) * 1000, (time.process_time() - cpu) * 1000
    return elapsed, cpu, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--out", default="benchmarks/results/latency.json")
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)

    runs = {}
    for name, mini in (("baseline", False), ("mini", True)):
        model = build_minivlm(mini)
        batch, pixels, text_ids = make_inputs(model)
        naive = NaiveVLM(model)
        runs[f"minivlm {name}"] = (lambda m=model, b=batch: m.generate(b, max_new_tokens=1)[:, 0], model)
        runs[f"naive {name}"] = (lambda n=naive, p=pixels, t=text_ids: n.first_token(p, t), naive)
    flops, first_tokens = {}, {}
    for key, (run, module) in runs.items():
        first_tokens[key] = int(run())
        # Eager attention while counting: the counter does not see CPU SDPA kernels.
        with eager_attention(module), FlopCounterMode(display=False) as counter:
            run()
        flops[key] = counter.get_total_flops()
    # The profiler's split of minivlm's FLOPs (its totals include the LLM output head at every position).
    for key in ("minivlm baseline", "minivlm mini"):
        flops[key + " (profiler)"] = count_flops(runs[key][1], prompt_tokens=PROMPT_TOKENS).prefill

    times: dict[str, list[float]] = {key: [] for key in runs}
    cpu_times: dict[str, list[float]] = {key: [] for key in runs}
    faults: dict[str, list[int]] = {key: [] for key in runs}
    load_before = os.getloadavg()
    for repeat in range(options.warmup + options.repeats):
        # Alternate the order every round so drift in machine load hits every variant alike.
        order = list(runs) if repeat % 2 == 0 else list(reversed(runs))
        for key in order:
            ms, cpu_ms, page_faults, _ = timed(runs[key][0])
            if repeat >= options.warmup:
                times[key].append(ms)
                cpu_times[key].append(cpu_ms)
                faults[key].append(page_faults)

    rows = []
    for key in runs:
        ts = times[key]
        rows.append({
            "variant": key, "ttft_ms": round(statistics.median(ts), 1), "min_ms": round(min(ts), 1),
            "max_ms": round(max(ts), 1), "cpu_ms": round(statistics.median(cpu_times[key]), 1),
            "page_faults": int(statistics.median(faults[key])),
            "gflops": round(flops[key] / 1e9, 2), "first_token": first_tokens[key],
        })
    by = {r["variant"]: r for r in rows}
    # Paired: each round's baseline over the same round's Mini (they ran back to back), then the
    # median; less moved by drift in machine speed over the run than a ratio of medians.
    paired = {
        impl: [b / m for b, m in zip(times[f"{impl} baseline"], times[f"{impl} mini"], strict=True)]
        for impl in ("minivlm", "naive")
    }
    ratios = {
        impl: {
            "time_ratio": round(by[f"{impl} baseline"]["ttft_ms"] / by[f"{impl} mini"]["ttft_ms"], 3),
            "paired_time_ratio": round(statistics.median(paired[impl]), 3),
            "cpu_time_ratio": round(by[f"{impl} baseline"]["cpu_ms"] / by[f"{impl} mini"]["cpu_ms"], 3),
            "flops_ratio": round(flops[f"{impl} baseline"] / flops[f"{impl} mini"], 3),
        }
        for impl in ("minivlm", "naive")
    }
    print(f"\n{'variant':<18} {'TTFT ms':>9} {'min':>8} {'max':>8} {'CPU ms':>8} {'faults':>8} {'GFLOPs':>8} "
          f"{'first token':>12}")
    for r in rows:
        print(f"{r['variant']:<18} {r['ttft_ms']:>9.1f} {r['min_ms']:>8.1f} {r['max_ms']:>8.1f} {r['cpu_ms']:>8.1f} "
              f"{r['page_faults']:>8} {r['gflops']:>8.2f} {r['first_token']:>12}")
    for impl, ratio in ratios.items():
        print(f"{impl:<8} baseline / mini: time {ratio['time_ratio']:.3f}x, paired {ratio['paired_time_ratio']:.3f}x, "
              f"CPU time {ratio['cpu_time_ratio']:.3f}x, FLOPs {ratio['flops_ratio']:.2f}x")
    above = sum(m > n for m, n in zip(paired["minivlm"], paired["naive"], strict=True))
    print(f"rounds where minivlm's baseline / Mini ratio is above the naive one: {above} of {options.repeats}")
    mini_vs_naive = by["minivlm mini"]["ttft_ms"] / by["naive mini"]["ttft_ms"]
    baseline_vs_naive = by["minivlm baseline"]["ttft_ms"] / by["naive baseline"]["ttft_ms"]
    print(f"minivlm / naive time: mini {mini_vs_naive:.3f}, baseline {baseline_vs_naive:.3f}")
    print(f"load average before / after the timed rounds: {load_before[0]:.1f} / {os.getloadavg()[0]:.1f}")
    same = all(first_tokens[f"minivlm {n}"] == first_tokens[f"naive {n}"] for n in ("baseline", "mini"))
    print(f"same first token as the naive implementation: {same}")

    result = {
        "config": {"encoder": ENCODER, "llm": LLM, "prompt_tokens": PROMPT_TOKENS, "batch": 1, "dtype": "float32"},
        "repeats": options.repeats, "warmup": options.warmup, "torch_threads": torch.get_num_threads(),
        "rows": rows, "ratios": ratios, "minivlm_mini_over_naive_mini": round(mini_vs_naive, 3),
        "minivlm_baseline_over_naive_baseline": round(baseline_vs_naive, 3),
        "same_first_token": same, "rounds_minivlm_ratio_above_naive": above,
        "times_ms": {key: [round(t, 1) for t in ts] for key, ts in times.items()},
        "profiler_gflops": {k: round(v / 1e9, 2) for k, v in flops.items() if "profiler" in k},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "load_average_before": load_before, "load_average": os.getloadavg()},
    }
    Path(options.out).parent.mkdir(parents=True, exist_ok=True)
    Path(options.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {options.out}")


if __name__ == "__main__":
    main()
