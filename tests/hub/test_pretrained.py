"""The model directory: sharded save, meta-device load (dtype, ties, buffers), strictness, safety."""

from __future__ import annotations

import json
import pathlib
import pickle

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from conftest import VISION, WIDTH, shapes_processor, tiny_encoder, tiny_llm_config, tiny_vlm
from minivlm import DecoderPreFusion, HFLanguageModel, MiniVLM, MLPProjector, Processor, QueryCompressor
from minivlm.model.pretrained import part_spec
from minivlm.model.weights import INDEX_FILE, WEIGHTS_FILE, read_header
from minivlm.processing.templates import Turn, get_template


def two_sample_batch(model: MiniVLM, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(2)]
    conversations = [
        [Turn("user", "<image> What colour is the shape at the top left ?"), Turn("assistant", "red")],
        [Turn("user", "Is there a blue circle ? <image>"), Turn("assistant", "no")],
    ]
    return model.processor(conversations, [[images[0]], [images[1]]])


def saved_model(tmp_path, shard: bool = True) -> tuple[MiniVLM, pathlib.Path]:
    model = tiny_vlm().eval()
    model.processor = shapes_processor(model)
    model.save_pretrained(tmp_path / "model", **({"max_shard_size": 60_000} if shard else {}))
    return model, tmp_path / "model"


def test_sharded_save_round_trips_bit_exact_with_every_buffer(tmp_path):
    model, directory = saved_model(tmp_path)
    index = json.loads((directory / INDEX_FILE).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (directory / WEIGHTS_FILE).exists()
    for shard in shards:  # each shard stays under the limit unless one tensor alone is bigger
        header, _ = read_header(directory / shard)
        sizes = [np.prod(v["shape"]) * 4 for v in header.values()]
        assert sum(sizes) <= 60_000 or len(sizes) == 1
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in model.state_dict().values())
    loaded = MiniVLM.from_pretrained(directory)
    batch = two_sample_batch(model)
    with torch.no_grad():
        assert torch.equal(loaded(batch).logits, model(batch).logits)
    buffers = dict(model.named_buffers())
    for name, buffer in loaded.named_buffers():  # non-persistent ones (rotary, position ids) recomputed
        assert not buffer.is_meta and torch.equal(buffer, buffers[name]), name
    assert not any(p.is_meta for p in loaded.parameters())


def test_tied_embeddings_stay_tied(tmp_path):
    torch.manual_seed(0)
    model = MiniVLM(tiny_encoder(), QueryCompressor(dim=VISION, size=1, num_heads=4), MLPProjector(VISION, WIDTH),
                    DecoderPreFusion(num_layers=1), HFLanguageModel(config=tiny_llm_config(tie_word_embeddings=True)))
    hf = model.llm.model
    assert hf.lm_head.weight is hf.get_input_embeddings().weight
    model.save_pretrained(tmp_path)
    header, _ = read_header(tmp_path / WEIGHTS_FILE)
    assert "llm.model.lm_head.weight" not in header  # stored once
    loaded = MiniVLM.from_pretrained(tmp_path).llm.model
    assert loaded.lm_head.weight is loaded.get_input_embeddings().weight
    assert torch.equal(loaded.lm_head.weight, hf.lm_head.weight)


class RandomOpSpy(TorchFunctionMode):
    """Records every random initialiser or random factory that actually runs."""

    NAMES = {"normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
             "xavier_normal_", "orthogonal_", "bernoulli_", "random_", "randn", "rand", "randint", "randperm",
             "randn_like", "rand_like", "normal", "multinomial"}

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.NAMES:
            self.calls.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_from_pretrained_never_runs_a_random_initialiser(tmp_path):
    _, directory = saved_model(tmp_path)
    with RandomOpSpy() as spy:
        tiny_vlm()
    assert "normal_" in spy.calls  # the spy sees what building from scratch does
    state = torch.random.get_rng_state()
    with RandomOpSpy() as spy:
        MiniVLM.from_pretrained(directory)
    assert spy.calls == []
    assert torch.equal(torch.random.get_rng_state(), state)


def test_bf16_weights_load_as_bf16_and_match_a_cast_model(tmp_path):
    model, _ = saved_model(tmp_path)
    model.save_pretrained(tmp_path / "bf16", dtype=torch.bfloat16)
    header, _ = read_header(tmp_path / "bf16" / WEIGHTS_FILE)
    assert {v["dtype"] for v in header.values()} == {"BF16"}
    loaded = MiniVLM.from_pretrained(tmp_path / "bf16")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    as_fp32 = MiniVLM.from_pretrained(tmp_path / "bf16", dtype=torch.float32)
    assert {p.dtype for p in as_fp32.parameters()} == {torch.float32}
    # Computed buffers keep the precision they were built in (as transformers does): rotary frequencies stay fp32.
    assert torch.equal(loaded.llm.rotary_embedding.inv_freq, model.llm.rotary_embedding.inv_freq)
    batch = two_sample_batch(model)
    with torch.no_grad():
        reference = model(batch).logits
        assert (loaded(batch).logits.float() - reference).abs().max() < 0.02


def test_save_and_load_keep_every_non_default_option(tmp_path):
    torch.manual_seed(0)
    model = MiniVLM(
        tiny_encoder(select_layer=-1, drop_cls=False),
        QueryCompressor(dim=WIDTH, size=2, semantics="paper", num_heads=2, key_pe="resized"),
        MLPProjector(VISION, WIDTH, depth=3),
        DecoderPreFusion(num_layers=2, init="copy", detach_text=False),
        HFLanguageModel(config=tiny_llm_config(rms_norm_eps=1e-3), attn_implementation="eager"),
        vision_tokens="compressed",
        frames_per_chunk=3,
    )
    model.processor = Processor(shapes_processor(model).tokenizer, get_template("vicuna_v1"), model.encoder.image_spec,
                                tokens_per_image=7, max_length=99, hd_grid=2, answers_in_prefusion="at_inference")
    model.save_pretrained(tmp_path)
    loaded = MiniVLM.from_pretrained(tmp_path)
    for name in ("encoder", "compressor", "projector", "prefusion", "llm"):
        assert part_spec(getattr(loaded, name)) == part_spec(getattr(model, name)), name
    assert (loaded.compressor.semantics, loaded.compressor.key_pe, loaded.compressor.size) == ("paper", "resized", 2)
    assert loaded.llm.attn_implementation == "eager" and loaded.llm.model.config.rms_norm_eps == 1e-3
    assert (loaded.encoder.select_layer, loaded.encoder.drop_cls) == (-1, False)
    assert (loaded.prefusion.init, loaded.prefusion.detach_text, loaded.projector.depth) == ("copy", False, 3)
    assert (loaded.vision_tokens, loaded.frames_per_chunk) == ("compressed", 3)
    p = loaded.processor
    assert (p.template.name, p.tokens_per_image, p.max_length, p.hd_grid, p.answers_in_prefusion) == (
        "vicuna_v1", 7, 99, 2, "at_inference")
    assert p.image_spec == model.encoder.image_spec
    assert p.tokenizer.get_vocab() == model.processor.tokenizer.get_vocab()


def _rewrite_weights(directory: pathlib.Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(directory / WEIGHTS_FILE)
    edit(weights)
    save_file(weights, directory / WEIGHTS_FILE)


def test_a_single_missing_tensor_is_named(tmp_path):
    _, directory = saved_model(tmp_path, shard=False)
    _rewrite_weights(directory, lambda w: w.pop("projector.layers.2.bias"))
    with pytest.raises(ValueError, match=r"missing \['projector.layers.2.bias'\], unexpected \[\]"):
        MiniVLM.from_pretrained(directory)


def test_a_shape_mismatch_names_the_tensor_and_both_shapes(tmp_path):
    _, directory = saved_model(tmp_path, shard=False)
    _rewrite_weights(directory, lambda w: w.update({"compressor.query": torch.zeros(4, VISION)}))
    with pytest.raises(ValueError, match=rf"compressor.query has shape \(4, {VISION}\) .* expects \(1, {VISION}\)"):
        MiniVLM.from_pretrained(directory)


class _TouchOnUnpickle:
    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_a_pickle_in_place_of_safetensors_fails_and_runs_nothing(tmp_path):
    _, directory = saved_model(tmp_path, shard=False)
    marker = tmp_path / "pwned"
    (directory / WEIGHTS_FILE).write_bytes(pickle.dumps({"weights": _TouchOnUnpickle(marker)}))
    with pytest.raises(ValueError, match="model.safetensors is not a safetensors file"):
        MiniVLM.from_pretrained(directory)
    (directory / WEIGHTS_FILE).unlink()
    (directory / "pytorch_model.bin").write_bytes(pickle.dumps(_TouchOnUnpickle(marker)))
    with pytest.raises(FileNotFoundError, match="found pytorch_model.bin; minivlm reads safetensors only"):
        MiniVLM.from_pretrained(directory)
    assert not marker.exists()


def _edit_config(directory: pathlib.Path, edit) -> None:
    config = json.loads((directory / "config.json").read_text())
    edit(config)
    (directory / "config.json").write_text(json.dumps(config))


def test_class_path_from_the_directory_is_never_imported(tmp_path, monkeypatch):
    _, directory = saved_model(tmp_path, shard=False)
    marker = tmp_path / "imported"
    (directory / "evil_parts.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nclass Enc: ...\n")
    monkeypatch.chdir(directory)  # even from inside the directory
    _edit_config(directory, lambda c: c["encoder"].update(class_path="evil_parts.Enc"))
    with pytest.raises(ValueError, match="encoder class_path 'evil_parts.Enc' cannot be imported"):
        MiniVLM.from_pretrained(directory)
    assert not marker.exists()
    _edit_config(directory, lambda c: c["encoder"].update(class_path="os.system"))
    with pytest.raises(ValueError, match="encoder class_path 'os.system' is not a VisionEncoder"):
        MiniVLM.from_pretrained(directory)


def test_a_recipe_in_the_directory_is_never_run(tmp_path, monkeypatch):
    model, directory = saved_model(tmp_path, shard=False)
    marker = tmp_path / "callback-ran"
    (tmp_path / "evil_callback.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nclass Boom: ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (directory / "recipe.yaml").write_text("trainer:\n  callbacks:\n    - class_path: evil_callback.Boom\n")
    loaded = MiniVLM.from_pretrained(directory)
    batch = two_sample_batch(model)
    with torch.no_grad():
        assert torch.equal(loaded(batch).logits, model(batch).logits)
    assert not marker.exists()


def test_a_config_from_a_newer_minivlm_names_both_versions(tmp_path):
    _, directory = saved_model(tmp_path, shard=False)
    _edit_config(directory, lambda c: c.update(minivlm_version="99.0.0"))
    with pytest.raises(ValueError, match=r"written by minivlm 99.0.0, newer than the installed 0\.1\.0"):
        MiniVLM.from_pretrained(directory)


def test_revision_is_for_hub_ids_only(tmp_path):
    _, directory = saved_model(tmp_path, shard=False)
    with pytest.raises(ValueError, match="revision='v1' applies to Hub repo ids"):
        MiniVLM.from_pretrained(directory, revision="v1")


def test_a_hub_id_loads_through_the_hub_cache_at_a_revision(tmp_path, monkeypatch):
    import shutil

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model, directory = saved_model(tmp_path, shard=False)
    storage = tmp_path / "cache" / "models--someone--tiny-vlm"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(directory, storage / "snapshots" / commit)
    (storage / "refs").mkdir()
    (storage / "refs" / "v1").write_text(commit)
    loaded = MiniVLM.from_pretrained("someone/tiny-vlm", revision="v1")
    batch = two_sample_batch(model)
    with torch.no_grad():
        assert torch.equal(loaded(batch).logits, model(batch).logits)
    with pytest.raises(Exception, match="(?i)cache"):
        MiniVLM.from_pretrained("someone/tiny-vlm", revision="v2")
