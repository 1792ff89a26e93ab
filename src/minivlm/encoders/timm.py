"""Vision encoders from timm: ViT-like models (patch embedding, a stack of blocks, prefix tokens)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from minivlm.encoders.base import ImageSpec, VisionEncoder

_REQUIRED = ("patch_embed", "blocks", "num_prefix_tokens", "forward_intermediates", "prune_intermediate_layers")


def _load_state_dict(path: str) -> dict[str, torch.Tensor]:
    if Path(path).suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


class TimmVisionEncoder(VisionEncoder):
    """A ViT-like timm model cut at the feature block.

    Builds ``timm.create_model(model_name, pretrained=pretrained, num_classes=0, **model_kwargs)``,
    optionally loads ``checkpoint_path`` (a local safetensors or torch file, strictly; only
    classifier weights, meaningless without a classifier, are skipped), then keeps blocks
    up to ``select_layer`` (-1 = last block, 0 = first) and drops the final norm and head.
    Features are that block's output without prefix tokens (CLS, registers), (P, h*w, D).
    """

    def __init__(
        self,
        model_name: str,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        model_kwargs: dict | None = None,
        select_layer: int = -1,
    ) -> None:
        super().__init__()
        try:
            import timm
            from timm.data import resolve_model_data_config
        except ImportError as error:
            raise ImportError("TimmVisionEncoder needs timm: pip install 'minivlm[timm]'") from error

        model_kwargs = dict(model_kwargs or {})
        model = timm.create_model(model_name, pretrained=pretrained, num_classes=0, **model_kwargs)
        missing = [name for name in _REQUIRED if not hasattr(model, name)]
        if missing:
            raise ValueError(
                f"TimmVisionEncoder supports ViT-like timm models only; {model_name!r} "
                f"({type(model).__name__}) lacks {', '.join(missing)}"
            )
        depth = len(model.blocks)
        if not -depth <= select_layer < depth:
            raise ValueError(
                f"select_layer={select_layer} is out of range for {model_name} with {depth} blocks: "
                f"use {-depth}..{depth - 1} (-1 = last block)"
            )
        if checkpoint_path is not None:
            state = _load_state_dict(checkpoint_path)
            # The model is built without a classifier, so a checkpoint's classifier weights are skipped.
            classifier = model.pretrained_cfg.get("classifier") or ()
            prefixes = tuple(f"{name}." for name in ((classifier,) if isinstance(classifier, str) else classifier))
            state = {k: v for k, v in state.items() if not k.startswith(prefixes)}
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as error:
                raise ValueError(f"checkpoint {checkpoint_path} does not match {model_name}: {error}") from error
        # A list selects block indices (an int would mean "the last n blocks").
        model.prune_intermediate_layers([select_layer % depth], prune_norm=True, prune_head=True)

        img_size = tuple(model.patch_embed.img_size or ())
        grid = tuple(model.patch_embed.grid_size or ())
        if len(img_size) != 2 or img_size[0] != img_size[1] or len(grid) != 2:
            raise ValueError(f"TimmVisionEncoder needs a fixed square image size, {model_name} has {img_size}")
        data_config = resolve_model_data_config(model)

        self.model = model
        self.model_name = model_name
        self.model_kwargs = model_kwargs
        self.select_layer = select_layer
        self.feature_dim = model.embed_dim
        self.grid = (int(grid[0]), int(grid[1]))
        self.image_spec = ImageSpec(
            size=int(img_size[0]), mean=tuple(data_config["mean"]), std=tuple(data_config["std"])
        )

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        # After pruning, the last remaining block is the selected one; prefix tokens are split off.
        return self.model.forward_intermediates(pixels, indices=1, output_fmt="NLC", intermediates_only=True)[0]

    def shard_units(self) -> list[nn.Module]:
        """The transformer blocks, each a unit for FSDP sharding and activation checkpointing."""
        return list(self.model.blocks)

    def init_args_for_export(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this architecture without downloading (weights are saved apart)."""
        return {
            "model_name": self.model_name,
            "model_kwargs": self.model_kwargs,
            "select_layer": self.select_layer,
        }
