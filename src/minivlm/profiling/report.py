"""`minivlm profile`: FLOPs, memory and latency of recipes side by side, as a table, JSON and a plot."""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from minivlm.profiling.build import build_from_recipe, read_model_section
from minivlm.profiling.flops import PARTS, FlopsBreakdown, count_flops, si
from minivlm.profiling.inputs import synthetic_batch, vision_tokens_per_image
from minivlm.profiling.latency import Latency, measure_latency
from minivlm.profiling.memory import GIB, MemoryEstimate, estimate_memory

DType = Literal["float16", "bfloat16", "float32"]
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
MIB = 1024**2


@dataclass
class RecipeProfile:
    """Everything `minivlm profile` reports for one recipe. `latency` is None when the model
    was not instantiated; `latency_note` then says why."""

    name: str
    hd_grid: int
    tokens_per_image: int
    parameters: dict[str, int]
    flops: FlopsBreakdown
    memory: MemoryEstimate
    latency: Latency | None
    latency_note: str | None
    count_seconds: float

    def to_dict(self) -> dict:
        return {
            "name": self.name, "hd_grid": self.hd_grid, "tokens_per_image": self.tokens_per_image,
            "parameters": self.parameters, "flops": self.flops.to_dict(), "memory": self.memory.to_dict(),
            "latency": None if self.latency is None else self.latency.to_dict(), "latency_note": self.latency_note,
            "count_seconds": self.count_seconds,
        }


def profile_recipe(
    recipe: str | Path,
    prompt_tokens: int = 64,
    answer_tokens: int = 0,
    memory_gb: float = 24.0,
    dtype: DType = "float16",
    latency_repeats: int = 5,
    latency_max_gb: float = 4.0,
    device: str = "cpu",
    section: dict | None = None,
    name: str | None = None,
) -> RecipeProfile:
    """Counts FLOPs and memory on the meta device (in `dtype`), then, when the model's float32
    weights fit in `latency_max_gb` GiB and `latency_repeats` > 0, builds it for real on
    `device` (random weights) and times `generate`."""
    start = time.perf_counter()
    built = build_from_recipe(recipe, "meta", section)
    model = built.model.to(DTYPES[dtype])
    tokens = vision_tokens_per_image(model, built.hd_grid)
    flops = count_flops(model, built.hd_grid, prompt_tokens, answer_tokens)
    memory = estimate_memory(model, tokens, prompt_tokens, memory_gb)
    parameters = {part: sum(p.numel() for p in getattr(model, part).parameters()) for part in PARTS}
    elapsed = time.perf_counter() - start
    latency, note = None, None
    float32_gb = 4 * sum(parameters.values()) / GIB
    if latency_repeats < 1:
        note = "not measured (--latency-repeats 0)"
    elif float32_gb > latency_max_gb:
        note = f"not measured: float32 weights need {float32_gb:.1f} GiB, over --latency-max-gb {latency_max_gb:g}"
    else:
        torch.manual_seed(0)
        real = build_from_recipe(recipe, device, section).model
        if torch.device(device).type != "cpu":
            real = real.to(DTYPES[dtype])
        batch = synthetic_batch(real, built.hd_grid, prompt_tokens)
        latency = measure_latency(real, batch, repeats=latency_repeats)
        del real
    return RecipeProfile(
        name=name or str(recipe), hd_grid=built.hd_grid, tokens_per_image=tokens, parameters=parameters,
        flops=flops, memory=memory, latency=latency, latency_note=note, count_seconds=elapsed,
    )


def with_compressor_size(recipe: str | Path, tokens: int) -> dict:
    """The recipe's `model:` section with the compressor's `size` set so it keeps `tokens` (a square)."""
    section = copy.deepcopy(read_model_section(recipe))
    size = math.isqrt(tokens)
    if size * size != tokens:
        raise ValueError(f"--sweep-tokens {tokens} is not a square; a size×size compressor keeps size² tokens")
    init_args = section.get("compressor", {}).get("init_args", {})
    if "size" not in init_args:
        raise ValueError(f"recipe {recipe}: its compressor has no `size` in init_args, so it cannot be swept")
    init_args["size"] = size
    return section


def with_hd_grid(section: dict, hd_grid: int | None) -> dict:
    """`section` with `hd_grid` set, or unchanged when `hd_grid` is None."""
    if hd_grid is None:
        return section
    if hd_grid < 1:
        raise ValueError(f"--hd-grid must be >= 1, got {hd_grid}")
    return {**section, "hd_grid": hd_grid}


def short_name(path: str | Path) -> str:
    """`recipes/llava-mini/vicuna-7b/stage2.yaml` -> `llava-mini/vicuna-7b/stage2`."""
    parts = Path(path).with_suffix("").parts
    return "/".join(parts[parts.index("recipes") + 1 :] if "recipes" in parts else parts[-3:])


def profile(
    config: str,
    compare: list[str] | None = None,
    prompt_tokens: int = 64,
    answer_tokens: int = 0,
    json_path: str | None = None,
    plot: str | None = None,
    memory_gb: float = 24.0,
    dtype: DType = "float16",
    sweep_tokens: list[int] | None = None,
    latency_repeats: int = 5,
    latency_max_gb: float = 4.0,
    device: str = "cpu",
    hd_grid: int | None = None,
) -> list[RecipeProfile]:
    """Profiles recipes: FLOPs per part, KV-cache memory, latency; prints a table, writes JSON and a PNG.

    Args:
        config: the recipe to profile (the reference column of the table)
        compare: recipes to profile beside it
        prompt_tokens: text tokens in the prompt besides the image
        answer_tokens: decoded tokens counted in the total
        json_path: write every profile here as JSON
        plot: write a PNG of FLOPs and latency against vision tokens per image here
        memory_gb: device memory (GiB) for the longest-video estimate
        dtype: dtype of weights and KV cache for memory, and of latency runs off the CPU
        sweep_tokens: also profile `config` with its compressor keeping each of these token counts
        latency_repeats: timed runs per recipe (0: do not measure latency)
        latency_max_gb: measure latency only for models whose float32 weights fit in this many GiB
        device: where latency is measured ("cpu", "cuda")
        hd_grid: profile every recipe with images as n×n crops + the whole image (2: 672 px from a
            336 px encoder), whatever its own `hd_grid` says
    """
    options = dict(
        prompt_tokens=prompt_tokens, answer_tokens=answer_tokens, memory_gb=memory_gb, dtype=dtype,
        latency_repeats=latency_repeats, latency_max_gb=latency_max_gb, device=device,
    )
    recipes = [config, *(compare or [])]
    # A missing or malformed file, or a bad override, fails before any counting.
    sections = [with_hd_grid(read_model_section(r), hd_grid) for r in recipes]
    sweep_sections = [(t, with_hd_grid(with_compressor_size(config, t), hd_grid)) for t in sweep_tokens or []]
    suffix = "" if hd_grid is None else f" hd{hd_grid}"
    profiles = [
        profile_recipe(r, section=section, name=short_name(r) + suffix, **options) for r, section in zip(recipes, sections)
    ]
    sweep = [
        profile_recipe(config, section=section, name=f"{short_name(config)}{suffix} @{tokens}", **options)
        for tokens, section in sweep_sections
    ]
    print(format_table(profiles + sweep, memory_gb))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "options": options | {"hd_grid": hd_grid},
            "profiles": [p.to_dict() for p in profiles],
            "sweep": [p.to_dict() for p in sweep],
        }
        Path(json_path).write_text(json.dumps(payload, indent=2))
    if plot:
        from minivlm.profiling.plot import plot_profiles

        plot_profiles(profiles, sweep, plot)
    return profiles + sweep


def format_table(profiles: list[RecipeProfile], memory_gb: float) -> str:
    """One column per recipe; the first is the reference for the reduction row."""
    ref = profiles[0].flops.total
    rows: list[tuple[str, list[str]]] = [
        ("vision tokens / image", [str(p.tokens_per_image) for p in profiles]),
        ("LLM prefill tokens", [str(p.flops.llm_tokens) for p in profiles]),
        ("pre-fusion tokens", [str(p.flops.prefusion_tokens) for p in profiles]),
    ]
    rows += [(f"{part} FLOPs", [si(p.flops.parts[part]) for p in profiles]) for part in PARTS]
    rows += [
        ("prefill FLOPs", [si(p.flops.prefill) for p in profiles]),
        ("  of which attention", [si(p.flops.attention) for p in profiles]),
        ("decode FLOPs / token", [si(p.flops.decode_per_token) for p in profiles]),
        ("total FLOPs", [si(p.flops.total) for p in profiles]),
        ("vs first column", [f"{100 * (p.flops.total / ref - 1):+.1f} %" for p in profiles]),
        ("weights GiB", [f"{p.memory.weight_bytes / GIB:.2f} ({p.memory.dtype})" for p in profiles]),
        ("KV cache KiB / token", [f"{p.memory.kv_bytes_per_token / 1024:.1f}" for p in profiles]),
        ("KV cache MiB / image", [f"{p.memory.kv_bytes_per_image / MIB:.1f}" for p in profiles]),
        ("KV cache MiB / frame", [f"{p.memory.kv_bytes_per_frame / MIB:.1f}" for p in profiles]),
        (f"video frames in {memory_gb:g} GiB", [f"{p.memory.longest_video_frames:,}" for p in profiles]),
        ("time to first token ms", [_ms(p, "ttft") for p in profiles]),
        ("decode ms / token", [_ms(p, "decode") for p in profiles]),
    ]
    names = [p.name for p in profiles]
    widths = [max(len(n), *(len(r[1][i]) for r in rows)) for i, n in enumerate(names)]
    label = max(len(r[0]) for r in rows)
    lines = [" " * label + "  " + "  ".join(n.rjust(w) for n, w in zip(names, widths))]
    lines += [name.ljust(label) + "  " + "  ".join(v.rjust(w) for v, w in zip(values, widths)) for name, values in rows]
    notes = [f"{p.name}: latency {p.latency_note}" for p in profiles if p.latency_note]
    return "\n".join(lines + notes)


def _ms(p: RecipeProfile, which: str) -> str:
    if p.latency is None:
        return "-"
    if which == "ttft":
        return f"{p.latency.ttft_ms:.1f} ({p.latency.ttft_min_ms:.0f}-{p.latency.ttft_max_ms:.0f})"
    return f"{p.latency.decode_ms_per_token:.2f}"
