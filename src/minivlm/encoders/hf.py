"""Vision encoders from transformers: CLIP and SigLIP vision towers."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    PretrainedConfig,
    PreTrainedModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from minivlm.encoders.base import ImageSpec, VisionEncoder
from minivlm.weights import checkpoint_files, has_meta_parameters, load_state, parameters_on_meta, read_tensors
from minivlm.weights import resolve_checkpoint_dir

# Where a full model's checkpoint keeps the vision tower.
_VISION_PREFIX = "vision_model."
_LAYER_PREFIX = "encoder.layers."
# Parts of the tower this encoder removes (it stops at `select_layer`, before these).
_DROPPED_PREFIXES = ("post_layernorm.", "head.")
# Older transformers saved the position-id range as a buffer; it is computed now, never loaded.
_LEGACY_POSITION_IDS = "embeddings.position_ids"


# In-place forms of the towers' activations (config `hidden_act`), each computing exactly what the
# transformers module computes. Named functions, not lambdas, so that the encoder still pickles.
def _quick_gelu_(x: torch.Tensor) -> torch.Tensor:
    """CLIP's x * sigmoid(1.702 x), written into x."""
    return x.mul_(torch.sigmoid_(x * 1.702))


def _gelu_(x: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.gelu_(x)


def _gelu_tanh_(x: torch.Tensor) -> torch.Tensor:
    """SigLIP's tanh approximation of GELU, written into x."""
    return torch.ops.aten.gelu_(x, approximate="tanh")


_IN_PLACE_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "quick_gelu": _quick_gelu_, "gelu": _gelu_, "gelu_pytorch_tanh": _gelu_tanh_,
}


@dataclass(frozen=True)
class _Family:
    """What differs between the supported vision towers."""

    config_cls: type[PretrainedConfig]
    model_cls: type[PreTrainedModel]
    has_cls: bool
    pre_norm: str | None  # name of the LayerNorm applied to the embeddings before the first layer
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


_CLIP = _Family(
    config_cls=CLIPVisionConfig,
    model_cls=CLIPVisionModel,
    has_cls=True,
    pre_norm="pre_layrnorm",
    mean=(0.48145466, 0.4578275, 0.40821073),
    std=(0.26862954, 0.26130258, 0.27577711),
)
_SIGLIP = _Family(
    config_cls=SiglipVisionConfig,
    model_cls=SiglipVisionModel,
    has_cls=False,
    pre_norm=None,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
)

# A `config` dict describes the vision tower itself; a `pretrained` checkpoint may also be
# the full image-text model, whose vision part is taken.
_CONFIG_FAMILIES = {"clip_vision_model": _CLIP, "siglip_vision_model": _SIGLIP}
_PRETRAINED_FAMILIES = {**_CONFIG_FAMILIES, "clip": _CLIP, "siglip": _SIGLIP}


def _family(model_type: Any, families: dict[str, _Family], source: str) -> _Family:
    if model_type not in families:
        raise ValueError(
            f"HFVisionEncoder does not support model_type {model_type!r} (from {source}); "
            f"supported: {', '.join(sorted(families))}"
        )
    return families[model_type]


class _InPlaceMLP(nn.Module):
    """A tower's fc1 -> activation -> fc2 block (same submodules, same parameter names) whose
    activation overwrites fc1's output when autograd does not need it.

    The transformers block allocates the activation's output as a new (P, N, intermediate)
    tensor, the largest kind in the tower, and quick-GELU two more for its temporaries. In place,
    quick-GELU allocates one temporary and the GELUs none, which saves memory traffic, peak memory
    and, on CPU, page faults on freshly allocated memory. A forward hook on fc1 that keeps its
    output sees the activated values in that case.
    """

    def __init__(self, mlp: nn.Module, activation: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fc1 = mlp.fc1
        self.activation_fn = mlp.activation_fn
        self.fc2 = mlp.fc2
        self._activation_in_place = activation

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.fc1(hidden)
        if torch.is_grad_enabled() and hidden.requires_grad:
            hidden = self.activation_fn(hidden)
        else:
            hidden = self._activation_in_place(hidden)
        return self.fc2(hidden)


def _activations_in_place(model: PreTrainedModel, hidden_act: Any) -> None:
    """Gives every layer of the tower an `_InPlaceMLP` where its activation has an in-place form."""
    activation = _IN_PLACE_ACTIVATIONS.get(hidden_act) if isinstance(hidden_act, str) else None
    if activation is None:
        return
    for layer in model.encoder.layers:
        layer.mlp = _InPlaceMLP(layer.mlp, activation)


def _square(value: int | list[int] | tuple[int, ...], name: str) -> int:
    """Reads a size that may be an int or an (h, w) pair; only square sizes are supported."""
    if isinstance(value, int):
        return value
    if len(value) == 2 and value[0] == value[1]:
        return int(value[0])
    raise ValueError(f"HFVisionEncoder supports square {name} only, got {value!r}")


class HFVisionEncoder(VisionEncoder):
    """A CLIP or SigLIP vision tower from transformers, cut at the feature layer.

    ``config`` is the architecture (a transformers vision config as a dict, with
    ``model_type`` "clip_vision_model" or "siglip_vision_model"); ``pretrained`` (a Hub id
    or local directory of a vision model or of a full CLIP / SigLIP model, whose vision
    part is taken) is where the weights come from. With ``config`` alone the weights are
    random. With ``pretrained`` the tower is built on the meta device and
    ``load_pretrained_weights(dtype)`` fills it once (``MiniVLMModule.configure_model``
    does this); give ``config`` too and building reads nothing from ``pretrained``.

    Features are ``hidden_states[select_layer]`` in the transformers convention
    (``hidden_states[0]`` is the embedding output, after CLIP's pre-LayerNorm; -1 is the
    last layer). Layers after it are removed, the post-LayerNorm is never applied and
    SigLIP's pooling head is not kept. ``drop_cls`` None drops CLIP's CLS token and keeps
    all of SigLIP's tokens (it has none); with ``drop_cls=False`` on CLIP, N is
    ``1 + grid[0] * grid[1]`` with the CLS token first.

    ``hf_config`` is the vision config as given or loaded, before truncation.
    """

    def __init__(
        self,
        config: dict | None = None,
        pretrained: str | None = None,
        select_layer: int = -2,
        drop_cls: bool | None = None,
    ) -> None:
        super().__init__()
        if config is None and pretrained is None:
            raise ValueError(
                "HFVisionEncoder needs `config` (a vision config dict), `pretrained` (a Hub id or local path), or both"
            )
        if config is not None:
            family = _family(config.get("model_type"), _CONFIG_FAMILIES, "config")
            hf_config = family.config_cls.from_dict(copy.deepcopy(config))
        else:
            model_type = PretrainedConfig.get_config_dict(pretrained)[0].get("model_type")
            family = _family(model_type, _PRETRAINED_FAMILIES, str(pretrained))
            # The vision config class reads a full model's `vision_config` by itself.
            hf_config = family.config_cls.from_pretrained(pretrained)

        if drop_cls is None:
            drop_cls = family.has_cls
        elif drop_cls and not family.has_cls:
            raise ValueError(f"drop_cls=True, but {hf_config.model_type} has no CLS token")

        num_layers = hf_config.num_hidden_layers
        if not -(num_layers + 1) <= select_layer <= num_layers:
            raise ValueError(
                f"select_layer={select_layer} is out of range for {num_layers} layers: hidden_states has "
                f"{num_layers + 1} entries (0 = embeddings), so use {-(num_layers + 1)}..{num_layers}"
            )
        keep = select_layer % (num_layers + 1)

        build_config = copy.deepcopy(hf_config)
        build_config.num_hidden_layers = keep
        if family is _SIGLIP:
            build_config.vision_use_head = False
        if pretrained is None:
            model = family.model_cls._from_config(build_config, attn_implementation="sdpa")
        else:
            with parameters_on_meta():
                model = family.model_cls._from_config(build_config, attn_implementation="sdpa")
        # Never applied; removing it keeps unused parameters out of optimizers and DDP.
        model.post_layernorm = nn.Identity()
        _activations_in_place(model, hf_config.hidden_act)

        self.vision_model = model
        self.hf_config = hf_config
        self.pretrained = pretrained
        self.select_layer = select_layer
        self.drop_cls = drop_cls
        self._pre_norm = family.pre_norm
        self.feature_dim = hf_config.hidden_size
        image_size = _square(hf_config.image_size, "image_size")
        side = image_size // _square(hf_config.patch_size, "patch_size")
        self.grid = (side, side)
        self.image_spec = ImageSpec(size=image_size, mean=family.mean, std=family.std)

    @property
    def weights_pending(self) -> bool:
        """True while the `pretrained` weights have not been loaded (parameters still on meta)."""
        return self.pretrained is not None and has_meta_parameters(self)

    def load_pretrained_weights(self, dtype: torch.dtype | None = None) -> None:
        """Reads the vision tower's weights from `pretrained` once, strictly, straight into `dtype`.

        A full CLIP / SigLIP checkpoint's text tower, the layers after `select_layer`, the
        post-LayerNorm and SigLIP's head are not read: this model does not have them.
        """
        if self.pretrained is None:
            raise ValueError("HFVisionEncoder was built from a config only: it has no `pretrained` weights to load")
        keep = len(self.vision_model.encoder.layers)
        files = checkpoint_files(resolve_checkpoint_dir(self.pretrained))
        tensors = read_tensors(files, keep=lambda key: not key.endswith(_LEGACY_POSITION_IDS))
        # A full CLIP/SigLIP model (and a vision model saved by transformers 4) nests the tower
        # under `vision_model.`; a vision model saved by transformers 5 does not.
        if any(key.startswith(_VISION_PREFIX) for key in tensors):
            tensors = {k[len(_VISION_PREFIX) :]: v for k, v in tensors.items() if k.startswith(_VISION_PREFIX)}

        def kept(key: str) -> bool:
            if key.startswith(_DROPPED_PREFIXES):
                return False
            if key.startswith(_LAYER_PREFIX):
                return int(key[len(_LAYER_PREFIX) :].split(".")[0]) < keep
            return True

        state = {key: value for key, value in tensors.items() if kept(key)}
        load_state(self.vision_model, state, dtype, f"checkpoint {self.pretrained}")

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        hidden = self.vision_model.embeddings(pixels)
        if self._pre_norm is not None:
            hidden = getattr(self.vision_model, self._pre_norm)(hidden)
        hidden = self.vision_model.encoder(inputs_embeds=hidden).last_hidden_state
        return hidden[:, 1:] if self.drop_cls else hidden

    def shard_units(self) -> list[nn.Module]:
        """The encoder blocks, each a unit for FSDP sharding and activation checkpointing."""
        return list(self.vision_model.encoder.layers)

    def init_args_for_export(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this architecture from a config alone, without downloading."""
        return {
            "config": self.hf_config.to_dict(),
            "select_layer": self.select_layer,
            "drop_cls": self.drop_cls,
        }
