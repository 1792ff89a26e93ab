"""LoRA adapters (peft) on the LLM and on pre-fusion, added in place.

Adapters are injected into the part's own modules (no `PeftModel` wrapper), so the part
keeps its interface; its state dict gains `…q_proj.lora_A.default.weight` entries next to
`…q_proj.base_layer.weight`, which Lightning checkpoints save and restore like any other
weight. `merge_lora` folds the adapters back into plain linear layers, for export.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peft import LoraConfig, inject_adapter_in_model
from torch import nn

# The linear layers of a Llama-style decoder block (attention and SwiGLU MLP).
LLAMA_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraSettings:
    """Rank, scaling (`alpha` / `rank`), dropout and the module names LoRA adapts."""

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_LINEARS))

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("lora.target_modules is empty: name the linear layers to adapt, e.g. q_proj, v_proj")


def add_lora(module: nn.Module, settings: LoraSettings, name: str) -> list[nn.Parameter]:
    """Injects LoRA adapters into `module` (named `name` in errors); returns the adapter parameters.

    The adapters are the parameters that did not exist before injection; the wrapped base
    layers keep their original tensors.
    """
    before = {id(p) for p in module.parameters()}
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
    )
    try:
        inject_adapter_in_model(config, module)
    except ValueError as error:
        raise ValueError(f"LoRA on {name}: {error}") from error
    adapters = [p for p in module.parameters() if id(p) not in before]
    if not adapters:
        raise ValueError(f"LoRA on {name}: no module matches target_modules {settings.target_modules}")
    return adapters
