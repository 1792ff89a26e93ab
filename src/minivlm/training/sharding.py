"""FSDP2 and activation checkpointing over a MiniVLM's shard units.

Every part may declare `shard_units()`: the submodules that are worth a unit of their own
(decoder layers of the LLM and of pre-fusion, encoder blocks). With FSDP2
(`torch.distributed.fsdp.fully_shard`) each unit becomes one all-gather / reduce-scatter
group, then the whole MiniVLM becomes the root group holding what is left (embeddings,
compressor, projector, norms, output head). Frozen and trained parameters may share a
group. Activation checkpointing (non-reentrant) wraps the same units, before sharding.

`FSDP2Strategy` is Lightning's `ModelParallelStrategy` with atomic sharded checkpoints
(`minivlm.training.checkpointing.swap_directory`).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import torch
from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    apply_activation_checkpointing,
    checkpoint_wrapper,
)
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from minivlm.model.vlm import MiniVLM
from minivlm.training.checkpointing import fresh_data_directory, remove_directory_checkpoint, swap_directory
from minivlm.training.stages import PARTS

K = TypeVar("K")

# Precisions under which FSDP2 gathers parameters in the low dtype and reduces gradients in fp32.
_MIXED_DTYPES = {"bf16-mixed": torch.bfloat16, "bf16": torch.bfloat16, "16-mixed": torch.float16, "16": torch.float16}


def shard_units(model: MiniVLM) -> list[nn.Module]:
    """Every part's declared units, in data-flow order of the parts (parts without any declare none)."""
    units: list[nn.Module] = []
    for name in PARTS:
        declare = getattr(getattr(model, name), "shard_units", None)
        if declare is not None:
            units.extend(declare())
    return units


def checkpoint_activations(model: MiniVLM) -> int:
    """Wraps every shard unit in non-reentrant activation checkpointing (its activations are
    recomputed in the backward instead of kept); returns how many units were wrapped.
    State-dict keys are unchanged (the wrapper strips its own prefix)."""
    units = {id(unit) for unit in shard_units(model)}
    apply_activation_checkpointing(
        model,
        checkpoint_wrapper_fn=partial(checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT),
        check_fn=lambda module: id(module) in units,
    )
    return len(units)


def mixed_precision_policy(precision: str) -> MixedPrecisionPolicy:
    """Under `*-mixed` precision, parameters are all-gathered in the low dtype and gradients
    reduced in fp32 (the fp32 master weights stay sharded); otherwise nothing is cast."""
    dtype = _MIXED_DTYPES.get(str(precision))
    if dtype is None:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


def apply_fsdp(
    model: MiniVLM,
    mesh: DeviceMesh,
    precision: str = "32-true",
    tracked: dict[K, list[nn.Parameter]] | None = None,
    reshard_after_forward: bool = True,
) -> dict[K, list[nn.Parameter]]:
    """`fully_shard` on every shard unit, then on the model (the root).

    `fully_shard` replaces each parameter by a sharded one; `tracked` lists of parameters
    (LoRA adapters, say) are returned with the sharded replacements, found by name.
    `generate` is registered as a forward method, so it gathers the root's parameters too.
    """
    tracked = tracked or {}
    names = {id(param): name for name, param in model.named_parameters()}
    tracked_names = {key: [names[id(param)] for param in params] for key, params in tracked.items()}
    policy = mixed_precision_policy(precision)
    for unit in shard_units(model):
        fully_shard(unit, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    register_fsdp_forward_method(model, "generate")
    sharded = dict(model.named_parameters())
    return {key: [sharded[name] for name in param_names] for key, param_names in tracked_names.items()}


class FSDP2Strategy(ModelParallelStrategy):
    """`ModelParallelStrategy` as pure FSDP2: every process is one data-parallel shard (no
    tensor parallelism; the stock "auto" would make the devices of a node one tensor-parallel
    group), with sharded checkpoints written to a fresh directory and swapped in atomically,
    so a kill while saving leaves the previous checkpoint in place and loadable."""

    def __init__(self, save_distributed_checkpoint: bool = True, process_group_backend: str | None = None) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
        )

    def setup_environment(self) -> None:
        # Resolved here, once the number of nodes and processes per node is known.
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        written = Path(self.broadcast(str(fresh_data_directory(path))))
        super().save_checkpoint(checkpoint, written, storage_options)
        self.barrier()
        if self.global_rank == 0:
            swap_directory(path, written)
        self.barrier()

    def remove_checkpoint(self, filepath: Any) -> None:
        if self.global_rank == 0:
            remove_directory_checkpoint(Path(filepath))


# `--trainer.strategy=fsdp2` in a recipe or on the command line (Lightning's own exact-name registry).
if "fsdp2" not in StrategyRegistry:
    StrategyRegistry.register("fsdp2", FSDP2Strategy, description="FSDP2 over shard units, atomic sharded checkpoints")
