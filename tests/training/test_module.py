"""MiniVLMModule: what trains, under which grad mode, from which weights, and in which dtype."""

import pytest
import torch
from peft.tuners.lora import LoraLayer

from conftest import VISION, WIDTH, tiny_encoder, tiny_llm_config
from minivlm.compressors import QueryCompressor
from minivlm.data.datamodule import Collate, ShapesDataset
from minivlm.data.synthetic import ShapesTask
from minivlm.fusion import DecoderPreFusion
from minivlm.llms import HFLanguageModel
from minivlm.model import MiniVLM
from minivlm.projectors import MLPProjector
from minivlm.training import module as module_file
from minivlm.training.init_from import InitFrom
from minivlm.hub.export import merge_lora
from minivlm.training.lora import LoraSettings
from minivlm.training.module import MiniVLMModule
from minivlm.training.optim import build_optimizer
from minivlm.training.stages import PARTS, PartStage, Stage
from minivlm.training.table import parts_rows
from minivlm.processing.templates import Turn

STAGE1 = Stage(projector=PartStage("full", 1e-2))
STAGE2 = Stage(
    compressor=PartStage("full", 1e-2), projector=PartStage("full", 1e-2),
    prefusion=PartStage("full", 1e-2), llm=PartStage("full", 1e-2),
)
LORA_STAGE = Stage(projector=PartStage("full", 1e-2), llm=PartStage("lora", 1e-2))


def build(stage: Stage, seed: int = 0, **kwargs) -> MiniVLMModule:
    torch.manual_seed(seed)
    return MiniVLMModule(
        tiny_encoder(), QueryCompressor(dim=VISION, size=1, num_heads=4), MLPProjector(VISION, WIDTH),
        DecoderPreFusion(num_layers=1), HFLanguageModel(config=tiny_llm_config()), stage=stage, **kwargs,
    )


def batch(module: MiniVLMModule, size: int = 4, seed: int = 0):
    dataset = ShapesDataset(ShapesTask(32, seed), size)
    return Collate(module.processor)([dataset[i] for i in range(size)])


def snapshot(module: MiniVLMModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


def changed_parts(before: dict, after: dict) -> set[str]:
    return {key.split(".")[0] for key in before if not torch.equal(before[key], after[key])}


def train_steps(module: MiniVLMModule, steps: int = 3) -> None:
    module.configure_model()
    module.train()
    optimizer, scheduler = build_optimizer(module.trainable_parameters(), module.stage, total_steps=steps)
    data = batch(module)
    for _ in range(steps):
        module.model(data).loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("stage, trained", [(STAGE1, {"projector"}), (STAGE2, {"compressor", "projector", "prefusion", "llm"})])
def test_a_stage_changes_exactly_the_parts_it_trains(stage, trained):
    module = build(stage)
    before = snapshot(module)
    train_steps(module)
    assert changed_parts(before, snapshot(module)) == trained


def test_frozen_parts_get_no_gradient_and_the_first_ones_run_under_no_grad():
    module = build(STAGE1)
    module.configure_model()
    module.train()
    grad_mode = {}

    def record(part):
        def hook(module, args):
            grad_mode.setdefault(part, torch.is_grad_enabled())

        return hook

    # A pre-hook registered after the module's own sees the grad mode the part's forward runs in.
    for part in PARTS:
        module.part(part).register_forward_pre_hook(record(part))
    module.model(batch(module)).loss.backward()
    # Nothing before the encoder and the (release, before-projector) compressor trains, so they
    # run under no_grad; the frozen LLM comes after the trained projector and must pass
    # gradients back to it.
    assert grad_mode == {"encoder": False, "compressor": False, "projector": True, "prefusion": True, "llm": True}
    for part in PARTS:
        grads = [p.grad for p in module.part(part).parameters()]
        if part == "projector":
            assert all(g is not None and g.abs().sum() > 0 for g in grads)
        else:
            assert all(g is None for g in grads), part
    assert not module.part("encoder").training and not module.part("llm").training
    assert module.part("projector").training


def test_lora_changes_only_adapters_and_the_listed_parts():
    module = build(LORA_STAGE, lora=LoraSettings(rank=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]))
    module.configure_model()
    before = snapshot(module)
    adapters = {k for k in before if ".lora_" in k}
    assert adapters and all(k.startswith("llm.") for k in adapters)
    assert len(module.trainable_parameters()["llm"]) == len(adapters) == 2 * 2 * 2  # layers x (q, v) x (A, B)
    train_steps(module)
    after = snapshot(module)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {k for k in changed if k.startswith("llm.")} <= adapters
    assert any(k.endswith("lora_B.default.weight") for k in changed)  # B starts at zero and learns
    assert changed_parts(before, after) == {"projector", "llm"}
    rows = {row[0]: row for row in parts_rows(module)}
    assert rows["llm"][3] == sum(p.numel() for p in module.trainable_parameters()["llm"]) < rows["llm"][2]


def test_merged_lora_computes_what_the_adapters_did():
    module = build(LORA_STAGE, lora=LoraSettings(rank=4, alpha=8, dropout=0.0))
    train_steps(module, steps=2)
    module.eval()
    data = batch(module, seed=3)
    with torch.no_grad():
        adapted = module.model(data).logits
        assert merge_lora(module.model.llm) == 2 * 7
        merged = module.model(data).logits
    assert not any(isinstance(m, LoraLayer) for m in module.model.llm.modules())
    assert torch.allclose(adapted, merged, atol=1e-5)


def test_lora_needs_its_settings():
    with pytest.raises(ValueError, match="trains llm with LoRA but the recipe has no `lora:` settings"):
        build(LORA_STAGE)


def test_processor_is_built_on_first_use_not_in_the_constructor(monkeypatch):
    calls = []
    original = module_file.load_tokenizer
    monkeypatch.setattr(module_file, "load_tokenizer", lambda name: calls.append(name) or original(name))
    module = build(STAGE1, max_length=64)
    assert calls == []
    processor = module.processor
    assert module.processor is processor and calls == ["shapes"]
    assert module.model.processor is processor and processor.max_length == 64


def test_model_options_go_to_minivlm_unchanged():
    module = build(STAGE1, vision_tokens="compressed", frames_per_chunk=3)
    assert (module.model.vision_tokens, module.model.frames_per_chunk) == ("compressed", 3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'no_such_option'"):
        build(STAGE1, no_such_option=1)


def test_parts_table_reports_counts_learning_rates_and_dtypes():
    module = build(STAGE1)
    module.configure_model()
    rows = {row[0]: row for row in parts_rows(module)}
    projector_params = sum(p.numel() for p in module.part("projector").parameters())
    assert rows["projector"] == ("projector", "MLPProjector", projector_params, projector_params, "0.01 (full)", "float32")
    assert rows["llm"][1:] == (
        "HFLanguageModel", sum(p.numel() for p in module.part("llm").parameters()), 0, "-", "float32")


def saved_model(tmp_path, seed: int) -> MiniVLM:
    model = build(STAGE1, seed=seed).model
    model.save_pretrained(tmp_path / "model")
    return model


def test_init_from_a_model_directory_loads_only_the_parts_asked_for(tmp_path):
    source = saved_model(tmp_path, seed=1)
    module = build(STAGE2, init_from=InitFrom(str(tmp_path / "model"), parts=["projector", "compressor"]))
    fresh = snapshot(module)
    module.configure_model()
    loaded = snapshot(module)
    for key, value in source.state_dict().items():
        if key.startswith(("projector.", "compressor.")):
            assert torch.equal(loaded[key], value), key
        else:
            assert torch.equal(loaded[key], fresh[key]), key  # as built
    assert changed_parts(fresh, loaded) == {"projector", "compressor"}


def test_init_from_a_lightning_checkpoint_takes_every_part_it_holds(tmp_path):
    source = build(STAGE1, seed=2).model
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}, path)
    module = build(STAGE2, init_from=InitFrom(str(path)))
    module.configure_model()
    for key, value in source.state_dict().items():
        assert torch.equal(module.model.state_dict()[key], value), key


def test_init_from_errors_name_the_file_and_the_part(tmp_path):
    saved_model(tmp_path, seed=1)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"model.projector.layers.0.weight": torch.zeros(3, 3)}}, other)
    with pytest.raises(ValueError, match=f"{other} holds no weights for llm"):
        build(STAGE2, init_from=InitFrom(str(other), parts=["llm"])).configure_model()
    with pytest.raises(ValueError, match=r"init_from .*other.ckpt \(projector\) does not match MLPProjector: missing"):
        build(STAGE2, init_from=InitFrom(str(other))).configure_model()
    with pytest.raises(FileNotFoundError, match="neither a model directory nor a .ckpt"):
        build(STAGE2, init_from=InitFrom(str(tmp_path / "nope"))).configure_model()
    with pytest.raises(ValueError, match="unknown parts"):
        InitFrom(str(other), parts=["decoder"])


def test_lora_on_prefusion_leaves_its_base_weights_alone():
    stage = Stage(projector=PartStage("full", 1e-2), prefusion=PartStage("lora", 1e-2))
    module = build(stage, lora=LoraSettings(rank=2, alpha=4, dropout=0.0, target_modules=["q_proj"]))
    module.configure_model()
    before = snapshot(module)
    train_steps(module)
    after = snapshot(module)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {k for k in changed if k.startswith("prefusion.")} == {
        f"prefusion.layers.0.self_attn.q_proj.lora_{ab}.default.weight" for ab in "AB"}
    assert changed_parts(before, after) == {"projector", "prefusion"}


def test_pad_token_is_set_on_the_tokenizer_or_refused_when_unknown():
    module = build(STAGE1, pad_token="<|end|>")
    assert module.processor.tokenizer.pad_token == "<|end|>"
    with pytest.raises(ValueError, match="pad_token '<PAD>' is not in the vocabulary of shapes"):
        build(STAGE1, pad_token="<PAD>").processor


def test_recipe_processor_settings_reach_the_processor():
    plain = build(STAGE1)
    module = build(STAGE1, system_prompt="Is there a red circle ?", square="pad")
    assert module.processor.square == "pad" and plain.processor.square == "resize"
    assert module.processor.template.system_prompt == "Is there a red circle ?"
    prompt = module.processor.tokenizer("Is there a red circle ?", add_special_tokens=False)["input_ids"]
    with_system = module.processor.encode([Turn("user", "<image> Is there a red circle ?"), Turn("assistant", "yes")])
    without = plain.processor.encode([Turn("user", "<image> Is there a red circle ?"), Turn("assistant", "yes")])
    assert with_system.input_ids == prompt + without.input_ids
    assert module.hparams["system_prompt"] == "Is there a red circle ?"
