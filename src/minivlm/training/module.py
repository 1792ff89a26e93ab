"""The LightningModule that trains a MiniVLM. It wraps the model; it does not subclass it."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from minivlm.compressors.base import Compressor
from minivlm.data.synthetic import build_shapes_tokenizer
from minivlm.encoders.base import VisionEncoder
from minivlm.eval.metrics import ExactMatch
from minivlm.fusion.base import PreFusion
from minivlm.fusion.decoder import DecoderPreFusion
from minivlm.llms.base import LanguageModel
from minivlm.model.decoding import CacheKind
from minivlm.model.vlm import MiniVLM
from minivlm.processing.batch import Batch
from minivlm.processing.processor import Processor
from minivlm.processing.images import SquareMode
from minivlm.processing.templates import ChatTemplate, get_template
from minivlm.projectors.base import Projector
from minivlm.training.init_from import InitFrom, read_parts
from minivlm.training.accumulation import TokenNormalisedLoss
from minivlm.training.lora import LoraSettings, add_lora
from minivlm.training.optim import build_optimizer
from minivlm.training.precision import FrozenDtype, part_dtype
from minivlm.training.resume import ExactResume
from minivlm.training.sharding import apply_fsdp, checkpoint_activations
from minivlm.training.stages import PARTS, Part, Stage, parts_without_grad, run_without_grad
from minivlm.training.table import parts_table
from minivlm.weights import has_meta_parameters, load_state

# Tokenizers that ship with minivlm, by exact name; anything else is a Hub id or a local path.
BUILTIN_TOKENIZERS = {"shapes": build_shapes_tokenizer}


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """A built-in tokenizer by exact name, else `AutoTokenizer.from_pretrained(name_or_path)`."""
    if name_or_path in BUILTIN_TOKENIZERS:
        return BUILTIN_TOKENIZERS[name_or_path]()
    return AutoTokenizer.from_pretrained(name_or_path)


class MiniVLMModule(L.LightningModule):
    """Trains a MiniVLM built from five parts named by `class_path` in the recipe.

    `stage` says how each part trains (frozen / full / lora) and at which learning rate;
    it is the only source of freezing. `lora` configures the adapters of parts in lora
    mode; `init_from` starts parts from an earlier run; `frozen_dtype` holds frozen parts
    in a narrower dtype under mixed precision. `tokenizer` (with `pad_token` for tokenizers
    that have none, like Vicuna's), `template`, `max_length` and `hd_grid` describe the
    Processor, which is built on first use (`processor`), never here.
    `max_new_tokens`, `decode_cache` and `compile_decode` set `predict`'s generation
    (`MiniVLM.generate`'s `max_new_tokens`, `cache` and `compile`).
    `activation_checkpointing` recomputes each decoder layer / encoder block in the backward
    instead of keeping its activations (`minivlm.training.sharding`). Every other keyword
    (`vision_tokens`, `frames_per_chunk`, ...) is a MiniVLM
    constructor argument and goes straight to it, so a new model option needs no edit here.

    Parts with `pretrained:` weights are materialised in `configure_model`, once, in the
    dtype the precision policy gives them (`minivlm.training.precision`).
    """

    def __init__(
        self,
        encoder: VisionEncoder,
        compressor: Compressor,
        projector: Projector,
        prefusion: PreFusion,
        llm: LanguageModel,
        stage: Stage,
        lora: LoraSettings | None = None,
        init_from: InitFrom | None = None,
        frozen_dtype: FrozenDtype | None = None,
        tokenizer: str = "shapes",
        pad_token: str | None = None,
        template: str = "shapes",
        system_prompt: str | None = None,
        square: SquareMode = "resize",
        max_length: int | None = None,
        hd_grid: int = 1,
        max_new_tokens: int = 16,
        decode_cache: CacheKind = "dynamic",
        compile_decode: bool = False,
        activation_checkpointing: bool = False,
        **model_options: Any,
    ) -> None:
        super().__init__()
        lora_parts = [part for part in PARTS if stage.of(part).mode == "lora"]
        if lora_parts and lora is None:
            raise ValueError(f"stage trains {', '.join(lora_parts)} with LoRA but the recipe has no `lora:` settings")
        if model_options.get("processor") is not None:
            raise ValueError("the processor is built from tokenizer/template/max_length/hd_grid, not passed in")
        if isinstance(prefusion, DecoderPreFusion) and prefusion.init != "random" and _weights_pending(llm):
            raise NotImplementedError(
                f"DecoderPreFusion(init={prefusion.init!r}) with a `pretrained:` LLM is not supported yet: the LLM's "
                "weights are loaded in configure_model, after pre-fusion is built; use init: random (the release's choice)"
            )
        self.save_hyperparameters(
            {
                "stage": asdict(stage),
                "lora": None if lora is None else asdict(lora),
                "init_from": None if init_from is None else asdict(init_from),
                "frozen_dtype": frozen_dtype,
                "tokenizer": tokenizer,
                "pad_token": pad_token,
                "template": template,
                "system_prompt": system_prompt,
                "square": square,
                "max_length": max_length,
                "hd_grid": hd_grid,
                "max_new_tokens": max_new_tokens,
                "decode_cache": decode_cache,
                "compile_decode": compile_decode,
                "activation_checkpointing": activation_checkpointing,
                **model_options,
            }
        )
        self.model = MiniVLM(encoder, compressor, projector, prefusion, llm, **model_options)
        self.stage = stage
        self.lora = lora
        self.init_from = init_from
        self.frozen_dtype = frozen_dtype
        self.tokenizer_name = tokenizer
        self.pad_token = pad_token
        self.template_name = template
        self.system_prompt = system_prompt
        self.square = square
        self.max_length = max_length
        self.hd_grid = hd_grid
        self.max_new_tokens = max_new_tokens
        self.decode_cache = decode_cache
        self.compile_decode = compile_decode
        self.activation_checkpointing = activation_checkpointing
        self.token_loss = TokenNormalisedLoss()
        self._processor: Processor | None = None
        self._adapters: dict[Part, list[nn.Parameter]] = {}
        self._configured = False
        for part in PARTS:
            self.part(part).requires_grad_(stage.of(part).mode == "full")
        self.no_grad_parts = parts_without_grad(stage, compressor.placement)
        for part in self.no_grad_parts:
            run_without_grad(self.part(part))
        self.val_exact_match = ExactMatch()
        self.test_exact_match = ExactMatch()

    def part(self, name: Part) -> nn.Module:
        return getattr(self.model, name)

    def _template(self, tokenizer: PreTrainedTokenizerBase) -> ChatTemplate:
        """The recipe's chat template, with its system prompt replaced when the recipe gives one."""
        if self.system_prompt is None:
            return get_template(self.template_name, tokenizer=tokenizer)
        return get_template(self.template_name, tokenizer=tokenizer, system_prompt=self.system_prompt)

    @property
    def processor(self) -> Processor:
        """The Processor for this model, built (tokenizer loaded) on first use."""
        if self._processor is None:
            tokenizer = load_tokenizer(self.tokenizer_name)
            if self.pad_token is not None:
                if self.pad_token not in tokenizer.get_vocab():
                    raise ValueError(f"pad_token {self.pad_token!r} is not in the vocabulary of {self.tokenizer_name}")
                tokenizer.pad_token = self.pad_token
            if len(tokenizer) > self.model.llm.vocab_size:
                raise ValueError(
                    f"tokenizer {self.tokenizer_name!r} has {len(tokenizer)} tokens but the LLM's vocabulary "
                    f"holds {self.model.llm.vocab_size}"
                )
            tokens = self.model.tokens_per_image if self.hd_grid == 1 else self.model.tokens_per_hd_image(self.hd_grid)
            self._processor = Processor(
                tokenizer, self._template(tokenizer), self.model.encoder.image_spec, tokens,
                self.max_length, hd_grid=self.hd_grid, tokens_per_frame=self.model.tokens_per_image, square=self.square,
            )
            self.model.processor = self._processor
        return self._processor

    def train(self, mode: bool = True) -> MiniVLMModule:
        """Frozen parts stay in eval mode (no dropout, fixed norms) whatever the module's mode."""
        super().train(mode)
        for part in PARTS:
            if self.stage.of(part).mode == "frozen":
                self.part(part).eval()
        return self

    @property
    def precision(self) -> str:
        """The trainer's precision; 32-true outside a Trainer."""
        return self._trainer.precision if self._trainer is not None else "32-true"

    def part_dtypes(self) -> dict[Part, torch.dtype]:
        """Each part's parameter dtype under the precision policy (LoRA parts: their frozen base)."""
        return {
            part: part_dtype(self.precision, self.stage.of(part).mode == "full", self.frozen_dtype) for part in PARTS
        }

    def configure_model(self) -> None:
        """Fills every part once, in its dtype: from `init_from`, else from its `pretrained`
        checkpoint, else as built (cast); then adds LoRA adapters. Runs once per module."""
        if self._configured:
            return
        dtypes = self.part_dtypes()
        taken = read_parts(self.init_from) if self.init_from is not None else {}
        sources = {}
        for part in PARTS:
            module = self.part(part)
            if part in taken:
                load_state(module, taken[part], dtypes[part], f"init_from {self.init_from.path} ({part})")
                sources[part] = f"init_from {self.init_from.path}"
            elif _weights_pending(module):
                module.load_pretrained_weights(dtypes[part])
                sources[part] = f"pretrained {module.pretrained}"
            else:
                _cast_parameters(module, dtypes[part])
                sources[part] = "as built"
        for part in PARTS:
            if self.stage.of(part).mode == "lora":
                adapters = add_lora(self.part(part), self.lora, part)
                adapter_dtype = part_dtype(self.precision, True, self.frozen_dtype)  # adapters train
                for param in adapters:
                    param.data = param.data.to(adapter_dtype)
                    param.requires_grad_(True)
                self._adapters[part] = adapters
                sources[part] += f" + LoRA rank {self.lora.rank}"
        self._configured = True
        rank_zero_info("minivlm weights:\n" + "\n".join(f"  {part:<10} {sources[part]}" for part in PARTS))
        self._parallelize()

    def _parallelize(self) -> None:
        """Activation checkpointing if the recipe asks for it, then FSDP2 when the strategy
        gives a device mesh (ModelParallelStrategy / FSDP2Strategy; DDP gives none)."""
        if self.activation_checkpointing:
            checkpoint_activations(self.model)
        if self._device_mesh is not None:
            precision = self._trainer.precision if self._trainer is not None else "32-true"
            # fully_shard replaces parameters by sharded ones: the adapter lists must follow.
            self._adapters = apply_fsdp(self.model, self._device_mesh["data_parallel"], precision, self._adapters)

    def trainable_parameters(self, require_adapters: bool = True) -> dict[Part, list[nn.Parameter]]:
        """What the optimizer updates, per trained part: all its parameters, or its LoRA adapters
        (none yet before `configure_model`, which is an error unless `require_adapters` is False)."""
        result: dict[Part, list[nn.Parameter]] = {}
        for part in self.stage.trained:
            if self.stage.of(part).mode == "lora":
                if part not in self._adapters and require_adapters:
                    raise RuntimeError(f"{part} trains with LoRA but configure_model() has not added the adapters")
                result[part] = self._adapters.get(part, [])
            else:
                result[part] = list(self.part(part).parameters())
        return result

    def on_fit_start(self) -> None:
        rank_zero_info("minivlm parts:\n" + parts_table(self))

    def forward(self, batch: Batch):
        return self.model(batch)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """Backpropagates the summed loss of this micro-batch; `on_before_optimizer_step`
        divides the gradients by the label tokens of the whole step (`training.accumulation`)."""
        out = self.model(batch, return_logits=False)
        return self.token_loss.micro_batch(out.loss_sum, out.label_count, self.trainer)

    def on_before_optimizer_step(self, optimizer) -> None:
        loss = self.token_loss.finish_step(self)
        self.log("train/loss", loss, prog_bar=True)

    def configure_callbacks(self) -> list[L.Callback]:
        return [ExactResume()]

    def _evaluate(self, batch: Batch, stage: str, metric: ExactMatch) -> None:
        out = self.model(batch)
        metric.update(out.logits, out.labels)
        self.log(f"{stage}/loss", out.loss, prog_bar=True, batch_size=batch.batch_size, sync_dist=True)
        self.log(f"{stage}/exact_match", metric, prog_bar=True, batch_size=batch.batch_size)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_exact_match)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_exact_match)

    def predict_step(self, batch: Batch, batch_idx: int) -> list[str]:
        """Greedy answers to the prompts of `batch` (a batch built with add_generation_prompt)."""
        tokens = self.model.generate(
            batch,
            max_new_tokens=self.max_new_tokens,
            eos_token_id=self.processor.eos_token_id,
            pad_token_id=self.processor.tokenizer.pad_token_id,
            cache=self.decode_cache,
            compile=self.compile_decode,
        )
        return [self.processor.decode(row) for row in tokens]

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking and self.val_exact_match.total > 0:
            rank_zero_info(
                f"step {self.global_step}: validation exact match {float(self.val_exact_match.compute()):.3f} "
                f"over {int(self.val_exact_match.total)} samples"
            )

    def configure_optimizers(self):
        optimizer, scheduler = build_optimizer(
            self.trainable_parameters(), self.stage, int(self.trainer.estimated_stepping_batches)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _weights_pending(module: nn.Module) -> bool:
    return bool(getattr(module, "weights_pending", False))


def _cast_parameters(module: nn.Module, dtype: torch.dtype) -> None:
    """Casts floating parameters only: buffers such as RoPE tables keep their precision."""
    if has_meta_parameters(module):
        return
    for param in module.parameters():
        if param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)
