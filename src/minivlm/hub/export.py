"""The shareable model directory: weights, config, processor, recipe and a model card.

`export_model` writes what ARCHITECTURE.md section 4 lists: `config.json` (parts by
class_path, minivlm version), `model.safetensors` (sharded above a size limit, with an
index), tokenizer and processor files, the resolved `recipe.yaml` and a `README.md` model
card with YAML front matter. LoRA adapters are merged into their base layers on request;
a model that still holds adapters cannot be described by its parts' arguments, so it is
refused rather than exported half.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from minivlm.model.packed_linear import unpack_linears
from minivlm.model.vlm import MiniVLM
from minivlm.model.weights import DEFAULT_MAX_SHARD_SIZE

RECIPE_FILE = "recipe.yaml"
CARD_FILE = "README.md"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ExportInfo:
    """What the model card says about training: the recipe text, parts trained, steps run."""

    recipe: str | None = None
    trained_parts: list[str] = field(default_factory=list)
    global_step: int | None = None
    flops_per_image: float | None = None


def _lora_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            yield name, module


def has_lora_adapters(model: nn.Module) -> bool:
    return next(_lora_layers(model), None) is not None


def merge_lora(model: nn.Module) -> int:
    """Folds every peft LoRA adapter into its base layer and puts the base layer back in its
    place; returns how many layers were merged."""
    # peft adds the adapter to the base weight through `.data`, which a packed copy would not see.
    unpack_linears(model)
    layers = list(_lora_layers(model))
    for name, layer in layers:
        layer.merge()
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name), leaf, layer.get_base_layer())
    return len(layers)


def base_models(recipe: dict[str, Any] | None) -> list[str]:
    """Hub ids or paths the recipe's parts start from (every `pretrained:` string in `model:`)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "pretrained" and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk((recipe or {}).get("model"))
    return list(dict.fromkeys(found))


def model_card(model: MiniVLM, info: ExportInfo) -> str:
    """README.md: YAML front matter for the Hub, then what the model is and how to load it."""
    recipe = yaml.safe_load(info.recipe) if info.recipe else None
    front: dict[str, Any] = {
        "library_name": "minivlm",
        "pipeline_tag": "image-text-to-text",
        "tags": ["minivlm", "vision-language", "llava-mini"],
        "vision_tokens_per_image": model.tokens_per_image,
    }
    bases = base_models(recipe)
    if bases:
        front["base_model"] = bases
    if info.flops_per_image is not None:
        front["flops_per_image"] = info.flops_per_image
    if info.trained_parts:
        front["trained_parts"] = info.trained_parts
    if info.global_step is not None:
        front["training_steps"] = info.global_step
    parts = "\n".join(
        f"| {name} | `{type(getattr(model, name)).__module__}.{type(getattr(model, name)).__name__}` | "
        f"{sum(p.numel() for p in getattr(model, name).parameters()):,} |"
        for name in ("encoder", "compressor", "projector", "prefusion", "llm")
    )
    training = (
        f"Trained parts: {', '.join(info.trained_parts)}; {info.global_step} optimizer steps. "
        f"The recipe is in `{RECIPE_FILE}` (documentation: loading never runs it)."
        if info.recipe
        else "No training recipe was recorded."
    )
    return f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---

# A minivlm model

A LLaVA-Mini-style vision-language model built with minivlm: each image reaches the
language model as {model.tokens_per_image} vision token(s).

| part | class | parameters |
|---|---|---|
{parts}

{training}

## Use

```python
from minivlm import MiniVLM
from minivlm.processing.templates import Turn

model = MiniVLM.from_pretrained("THIS_REPO_OR_DIRECTORY")
processor = model.processor
batch = processor([[Turn("user", "<image> What is in the picture?")]], [["image.png"]], add_generation_prompt=True)
tokens = model.generate(batch, max_new_tokens=32, eos_token_id=processor.eos_token_id)
print(processor.decode(tokens[0]))
```

or from a terminal: `minivlm chat --model THIS_REPO_OR_DIRECTORY --image image.png "What is in the picture?"`.
Loading reads `config.json` and safetensors weights only; no code from this repository runs.
"""


def export_model(
    model: MiniVLM,
    out: str | Path,
    info: ExportInfo | None = None,
    merge_lora_adapters: bool = False,
    dtype: str | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
) -> list[Path]:
    """Writes the model directory `out`; returns the files written, sorted."""
    info = info or ExportInfo()
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if model.processor is None:
        raise ValueError("the model has no processor; set model.processor so the export can be used to chat")
    if merge_lora_adapters:
        if merge_lora(model) == 0:
            raise ValueError("--merge-lora was given, but the model has no LoRA adapters")
    elif has_lora_adapters(model):
        raise ValueError("the model has LoRA adapters; export with --merge-lora to fold them into the weights")
    out = Path(out)
    model.save_pretrained(out, max_shard_size=max_shard_size, dtype=DTYPES[dtype] if dtype else None)
    if info.recipe is not None:
        (out / RECIPE_FILE).write_text(info.recipe)
    else:  # a recipe left from an earlier export into the same directory would describe another model
        (out / RECIPE_FILE).unlink(missing_ok=True)
    (out / CARD_FILE).write_text(model_card(model, info))
    return sorted(p for p in out.rglob("*") if p.is_file())
