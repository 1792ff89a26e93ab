"""Does one vision token with pre-fusion keep what all tokens give? The LLaVA-Mini ablation on a CPU.

Trains, with one budget for all (same steps, batch, data, optimiser and frozen encoder), on
the scenes task (`minivlm.data.scenes`: crowded grids, questions that name a cell):

    a    all tokens, no compression (LLaVA-1.5 style)
    b    1 token by average pooling, no pre-fusion
    c    1 token by query compression, no pre-fusion
    d1 d2 d4   1 token by query compression + pre-fusion with 1, 2, 4 layers
    e4 e16     4 and 16 tokens by query compression + 4 pre-fusion layers

and reports test accuracy (greedy answers, exact match; mean ± std over seeds), forward
FLOPs per sample and training wall time per configuration.

As in the paper, the vision encoder and the LLM are pre-trained, once, before the study (their
real pre-training cannot run on a CPU):

- the encoder, a 2-layer CLIP-shaped one with one patch per cell, learns to tell each patch's
  colour, shape, row and column on scenes of another generator seed, and is then loaded
  frozen into every configuration (the paper keeps CLIP frozen);
- the LLM, a small Llama, learns a text-only version of the task (`pretrain_llm`: each
  cell's words summed into one position where the image goes, the same questions, and the
  grid read aloud), so it can already find "cell e3" among the grid's positions, as the
  paper's Vicuna can read what it is given. Every configuration starts from it and trains it
  further; with `--prefusion-init copy` (the default) pre-fusion layers start from the LLM's
  layers (`DecoderPreFusion(init="copy")`: layers beyond the LLM's depth are copies whose
  output projections start at zero, so they begin as the identity), with `random` from
  scratch as in the release.

Compressor, projector and pre-fusion train from scratch, with one budget for all. Questions
name cells with one word each (`--names cells`; `words` is the task's default naming,
"row three column five", with which the LLM cannot be pre-trained: summed into one position,
row and column words would be indistinguishable). Runs go `--jobs` at a time, one thread each.

    PYTHONPATH=src .venv/bin/python benchmarks/ablation.py                       # the full study
    PYTHONPATH=src .venv/bin/python benchmarks/ablation.py --configs a c d1 --seeds 0 --steps 300 --test-size 64

Prints a markdown table; writes JSON to benchmarks/results/, the table into docs/results.md
(between the ablation markers) and a bar chart to docs/images/ablation.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import logging
import platform
import statistics
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import get_args

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from barplot import bar_chart
from minivlm import DecoderPreFusion, HFLanguageModel, HFVisionEncoder, IdentityCompressor, MLPProjector, NoPreFusion
from minivlm import PoolCompressor, QueryCompressor
from minivlm.data.datamodule import Collate
from minivlm.data.scenes import CELL_NAMES, COLOURS, EMPTY, KINDS, NAMES, NUMBER_WORDS, SHAPES, ScenesTask
from minivlm.data.scenes import build_scenes_tokenizer, cell_name
from minivlm.data.scenes_datamodule import ScenesDataModule, ScenesDataset
from minivlm.fusion.decoder import PreFusionInit
from minivlm.model.inputs import splice_media
from minivlm.model.loss import label_positions, next_token_loss
from minivlm.processing.images import normalise_pixels
from minivlm.processing.processor import Processor
from minivlm.processing.templates import Turn, get_template
from minivlm.training.module import MiniVLMModule
from minivlm.training.stages import PARTS, PartStage, Stage

VISION_WIDTH, LLM_WIDTH = 64, 128
# The study's defaults (see the module docstring for why these).
GRID_SIZE, SCENE, QUESTION_KINDS, STEPS, QUESTIONS = 4, "crowded", ("colour_at", "shape_at"), 500, 8
DOCS_START, DOCS_END = "<!-- ablation:start -->", "<!-- ablation:end -->"


@dataclass(frozen=True)
class Config:
    """One column of the ablation: which compressor, how many tokens, how many pre-fusion layers."""

    name: str
    description: str
    compressor: str  # "identity" | "pool" | "query"
    size: int  # tokens per image = size², except identity (all patches)
    prefusion_layers: int


CONFIGS = {
    config.name: config
    for config in (
        Config("a", "all tokens, no compression", "identity", 0, 0),
        Config("b", "1 token, average pooling", "pool", 1, 0),
        Config("c", "1 token, query, no pre-fusion", "query", 1, 0),
        Config("d1", "1 token, query + 1 pre-fusion layer", "query", 1, 1),
        Config("d2", "1 token, query + 2 pre-fusion layers", "query", 1, 2),
        Config("d4", "1 token, query + 4 pre-fusion layers", "query", 1, 4),
        Config("e4", "4 tokens, query + 4 pre-fusion layers", "query", 2, 4),
        Config("e16", "16 tokens, query + 4 pre-fusion layers", "query", 4, 4),
    )
}


def scenes_task(options: argparse.Namespace, seed: int | None = None) -> ScenesTask:
    """The benchmark's task, as every run's data module builds it (with another generator `seed`:
    the same task on other scenes)."""
    return ScenesTask(
        options.image_size, options.data_seed if seed is None else seed, options.grid, tuple(options.kinds),
        options.occupancy, options.scene, options.names,
    )


def build_encoder(options: argparse.Namespace) -> HFVisionEncoder:
    """A 2-layer CLIP-shaped encoder with one patch per cell of the scene's grid."""
    return HFVisionEncoder(
        config=dict(
            model_type="clip_vision_model", image_size=options.image_size, patch_size=options.image_size // options.grid,
            hidden_size=VISION_WIDTH, intermediate_size=2 * VISION_WIDTH, num_hidden_layers=2, num_attention_heads=4,
        ),
        select_layer=-1,
    )


def pretrain_encoder(options: argparse.Namespace) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The stand-in for CLIP: one encoder, trained once before the study and then frozen in
    every configuration, whose patch features tell each cell's colour, shape, row and column
    (linear heads on every patch). It sees crowded scenes of another generator seed, never
    the study's images, and no question."""
    torch.manual_seed(options.pretrain_seed)
    task = ScenesTask(options.image_size, options.pretrain_seed, options.grid, scene="crowded")
    encoder = build_encoder(options)
    grid = options.grid
    heads = nn.ModuleDict({
        "colour": nn.Linear(VISION_WIDTH, len(COLOURS) + 1), "shape": nn.Linear(VISION_WIDTH, len(SHAPES) + 1),
        "row": nn.Linear(VISION_WIDTH, grid), "column": nn.Linear(VISION_WIDTH, grid),
    })
    optimizer = torch.optim.AdamW([*encoder.parameters(), *heads.parameters()], lr=3e-3)
    cells = torch.arange(grid * grid)
    batch = options.pretrain_batch_size
    for step in range(options.pretrain_steps):
        layouts = np.stack([task.layout(step * batch + i) for i in range(batch)])
        pixels = torch.from_numpy(np.stack([task.render(layout) for layout in layouts])).permute(0, 3, 1, 2)
        features = encoder(normalise_pixels(pixels, encoder.image_spec))
        codes = torch.from_numpy(layouts).reshape(batch, -1)
        empty = codes == EMPTY
        targets = {
            "colour": torch.where(empty, len(COLOURS), codes // len(SHAPES)),
            "shape": torch.where(empty, len(SHAPES), codes % len(SHAPES)),
            "row": (cells // grid).expand(batch, -1), "column": (cells % grid).expand(batch, -1),
        }
        logits = {name: head(features) for name, head in heads.items()}
        loss = sum(nn.functional.cross_entropy(logits[k].flatten(0, 1), targets[k].flatten()) for k in heads)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # Accuracy on the last pre-training batch (none without pre-training).
    accuracy = {k: float((logits[k].argmax(-1) == targets[k]).float().mean()) for k in heads} if options.pretrain_steps else {}
    return encoder.state_dict(), accuracy


def build_llm(options: argparse.Namespace) -> HFLanguageModel:
    """The small Llama every configuration uses (its vocabulary: the task's words)."""
    return HFLanguageModel(
        config=dict(
            model_type="llama", vocab_size=len(build_scenes_tokenizer(options.names)), hidden_size=LLM_WIDTH,
            intermediate_size=2 * LLM_WIDTH, num_hidden_layers=options.llm_layers, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=512,
        )
    )


def cell_words(layouts: np.ndarray, tokenizer) -> torch.Tensor:
    """(B, grid², 3) token ids of each cell's words, cells in the encoder's patch order (row-major):
    its one-word name, colour and shape (-1 for an empty cell's colour and shape)."""
    grid = layouts.shape[1]
    ids = tokenizer.get_vocab()
    codes = layouts.reshape(len(layouts), -1)
    words = np.full((*codes.shape, 3), -1)
    words[..., 0] = [ids[cell_name(*divmod(cell, grid))] for cell in range(grid * grid)]
    occupied = codes != EMPTY
    words[..., 1] = np.where(occupied, np.array([ids[c] for c in COLOURS])[codes // len(SHAPES)], -1)
    words[..., 2] = np.where(occupied, np.array([ids[s] for s in SHAPES])[codes % len(SHAPES)], -1)
    return torch.from_numpy(words)


def read_aloud(layout: np.ndarray) -> str:
    """The scene's occupied cells in reading order, each as its name, colour and shape
    ("d1 yellow triangle a2 red circle ..."): every colour and shape follows the cell's name, so
    predicting it is a one-step lookup, the half of a question that is learnt first."""
    words = []
    for row, col in zip(*np.nonzero(layout != EMPTY)):
        colour, shape = divmod(int(layout[row, col]), len(SHAPES))
        words.append(f"{cell_name(row, col)} {COLOURS[colour]} {SHAPES[shape]}")
    return " ".join(words)


def pretrain_llm(options: argparse.Namespace) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The stand-in for a pre-trained LLM (the paper's Vicuna): the study's Llama, trained once
    before the study on a text-only version of the task, then the start of every configuration.

    Each scene is written cell by cell: a cell's words (its one-word name, colour and shape; an
    empty cell has only its name) are summed into one input position, the way a vision token
    carries one patch, and the grid's positions take the image's place in the conversations the
    study trains on (its question kinds and turns per scene); after the questions (so that they
    cannot be answered from it) the grid is read aloud as one more answer (`read_aloud`). So the
    LLM learns the lookup "cell e3 -> that position's colour and shape" from text, and each
    configuration then only has to map its vision tokens onto it. The scenes come from another
    generator seed than the study's. Returns the LLM's state and its answer accuracy on the
    questions about 256 held-out text scenes."""
    torch.manual_seed(options.pretrain_seed)
    task = scenes_task(options, options.pretrain_seed)
    tokenizer = build_scenes_tokenizer(options.names)
    processor = Processor(tokenizer, get_template("shapes", tokenizer), build_encoder(options).image_spec, options.grid**2)
    collate = Collate(processor)
    llm = build_llm(options)
    optimizer = torch.optim.AdamW(llm.parameters(), lr=options.llm_pretrain_lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, options.llm_pretrain_lr, total_steps=options.llm_pretrain_steps, pct_start=0.05
    )

    def forward(dataset: ScenesDataset, rows: range, aloud: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(final hidden states, labels) of the text version of `dataset[rows]`."""
        layouts = np.stack([task.layout(dataset.indices[i]) for i in rows])
        records = [dataset[i] for i in rows]
        if aloud:  # after the questions, so that they cannot be answered from it
            records = [
                (turns + [Turn("user", "?"), Turn("assistant", read_aloud(layout))], images)
                for (turns, images), layout in zip(records, layouts)
            ]
        batch = collate(records)
        words = cell_words(layouts, tokenizer)
        cells = (llm.embed(words.clamp(min=0)) * (words >= 0)[..., None]).sum(2)  # an empty cell's -1s add nothing
        text = llm.embed(batch.input_ids.clamp(min=0))
        counts = torch.full((len(rows),), options.grid**2)
        inputs = splice_media(text, batch.input_ids, batch.attention_mask, cells.flatten(0, 1), counts, batch.labels)
        hidden, _ = llm(inputs.embeds, attention_mask=inputs.attention_mask, hidden_only=True)
        return hidden, inputs.labels

    batch_size = options.batch_size
    train = ScenesDataset(task, "train", options.llm_pretrain_steps * batch_size, questions_per_image=options.questions)
    for step in range(options.llm_pretrain_steps):
        hidden, labels = forward(train, range(step * batch_size, (step + 1) * batch_size), aloud=True)
        loss_sum, count = next_token_loss(hidden, llm.output_head, labels, llm.vocab_size)
        optimizer.zero_grad()
        (loss_sum / count).backward()
        nn.utils.clip_grad_norm_(llm.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    # Accuracy of the answer words (not the end-of-turn markers) on held-out scenes, questions only.
    test = ScenesDataset(task, "test", 256, questions_per_image=options.questions)
    with torch.no_grad():
        hidden, labels = forward(test, range(len(test)), aloud=False)
        mask, targets = label_positions(labels)
        predicted = llm.output_head(hidden[:, :-1][mask]).argmax(-1)
        answers = targets != processor.eos_token_id
    return llm.state_dict(), {"answer_accuracy": float((predicted == targets)[answers].float().mean())}


# The settings a pre-trained LLM depends on (its cache key).
LLM_PRETRAINING_SETTINGS = (
    "grid", "cell", "scene", "kinds", "names", "occupancy", "questions", "llm_layers", "batch_size", "pretrain_seed",
    "llm_pretrain_steps", "llm_pretrain_lr",
)


def pretrained_llm(options: argparse.Namespace) -> tuple[dict[str, torch.Tensor], dict[str, float], float, bool]:
    """`pretrain_llm`'s state and accuracy, the seconds it took and whether it came from the cache:
    with `--llm-cache`, read from (or written to) that folder under a name made from the
    settings it depends on."""
    settings = {key: getattr(options, key) for key in LLM_PRETRAINING_SETTINGS}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    cached = Path(options.llm_cache) / f"llm-{digest}.pt" if options.llm_cache else None
    if cached is not None and cached.exists():
        record = torch.load(cached)
        print(f"LLM read from {cached} (pre-trained in {record['seconds']:.0f} s when it was made); "
              f"answer accuracy {record['accuracy']['answer_accuracy']:.3f}", flush=True)
        return record["state"], record["accuracy"], record["seconds"], True
    started = time.perf_counter()
    state, accuracy = pretrain_llm(options)
    seconds = time.perf_counter() - started
    print(f"LLM pre-trained in {seconds:.0f} s; answer accuracy {accuracy['answer_accuracy']:.3f}", flush=True)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state": state, "accuracy": accuracy, "seconds": seconds, "settings": settings}, cached)
    return state, accuracy, seconds, False


def build_module(
    config: Config, tokenizer_dir: Path, options: argparse.Namespace, encoder_state: dict[str, torch.Tensor],
    llm_state: dict[str, torch.Tensor] | None = None,
) -> MiniVLMModule:
    """The parts of `config` at the ablation's widths, wrapped for training: the pre-trained
    encoder frozen (as the paper keeps CLIP frozen), the LLM from `llm_state` (the pre-trained
    LLM; None: from scratch) and pre-fusion as `--prefusion-init` says, all trained but the encoder."""
    encoder = build_encoder(options)
    encoder.load_state_dict(encoder_state)
    if config.compressor == "identity":
        compressor = IdentityCompressor(dim=LLM_WIDTH)
    elif config.compressor == "pool":
        # Pooling where the query compressor attends (by default before the projector, as the release
        # places its queries), so (b) and (c) differ in how they pool and in nothing else.
        dim = VISION_WIDTH if options.pool_placement == "before_projector" else LLM_WIDTH
        compressor = PoolCompressor(dim=dim, size=config.size, placement=options.pool_placement)
    else:
        compressor = QueryCompressor(dim=VISION_WIDTH, size=config.size, num_heads=4, semantics="release")
    llm = build_llm(options)
    if llm_state is not None:
        llm.load_state_dict(llm_state)
    prefusion = (
        DecoderPreFusion(num_layers=config.prefusion_layers, init=options.prefusion_init)
        if config.prefusion_layers else NoPreFusion()
    )
    trained = {part: PartStage("full", options.lr) for part in PARTS if part != "encoder"}
    module = MiniVLMModule(
        encoder=encoder, compressor=compressor, projector=MLPProjector(VISION_WIDTH, LLM_WIDTH), prefusion=prefusion,
        llm=llm, tokenizer=str(tokenizer_dir), template="shapes",
        stage=Stage(**trained, weight_decay=0.01, warmup_ratio=0.05),
    )
    return module


def flops_per_sample(module: MiniVLMModule, task: ScenesTask) -> float:
    """Forward FLOPs of one training sample (prompt and answer), counted by torch's FLOP counter."""
    batch = Collate(module.processor)([ScenesDataset(task, "test", 1)[0]])
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module.model(batch)
    return float(counter.get_total_flops())


def test_accuracy(module: MiniVLMModule, task: ScenesTask, size: int) -> tuple[float, dict[str, float]]:
    """Exact match of greedy answers on the first `size` test samples, overall and per question kind."""
    dataset = ScenesDataset(task, "test", size, prompts_only=True)
    loader = DataLoader(dataset, batch_size=64, collate_fn=Collate(module.processor, add_generation_prompt=True))
    processor = module.processor
    right, seen = Counter(), Counter()
    module.model.eval()
    offset = 0
    for batch in loader:
        tokens = module.model.generate(
            batch, max_new_tokens=3, eos_token_id=processor.eos_token_id, pad_token_id=processor.tokenizer.pad_token_id
        )
        for row in tokens:
            sample = task.sample(dataset.indices[offset])
            offset += 1
            seen[sample.kind] += 1
            right[sample.kind] += int(processor.decode(row) == sample.answer)
    return sum(right.values()) / sum(seen.values()), {kind: right[kind] / seen[kind] for kind in sorted(seen)}


def answer_prior(task: ScenesTask, train_size: int, test_size: int) -> float:
    """Accuracy of the best answer per question with its positions blanked (what no image gives)."""
    def strip(question: str) -> str:
        return " ".join(word for word in question.split() if word not in NUMBER_WORDS and word not in CELL_NAMES)

    counts: dict[str, Counter] = defaultdict(Counter)
    for index in task.indices("train", train_size):
        sample = task.sample(index)
        counts[strip(sample.question)][sample.answer] += 1
    tests = [task.sample(i) for i in task.indices("test", test_size)]
    right = sum(counts[strip(s.question)].most_common(1)[0][0] == s.answer for s in tests if counts[strip(s.question)])
    return right / len(tests)


def run(
    config: Config, seed: int, options: argparse.Namespace, tokenizer_dir: str, encoder_path: str, llm_path: str | None
) -> dict:
    """Trains and tests one (configuration, seed) on one thread (runs go `--jobs` at a time)."""
    torch.set_num_threads(1)
    logging.getLogger("lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    L.seed_everything(seed, verbose=False)
    llm_state = torch.load(llm_path) if llm_path else None
    module = build_module(config, Path(tokenizer_dir), options, torch.load(encoder_path), llm_state)
    data = ScenesDataModule(
        train_size=options.steps * options.batch_size, val_size=1, test_size=options.test_size,
        image_size=options.image_size, seed=options.data_seed, batch_size=options.batch_size, grid=options.grid,
        kinds=tuple(options.kinds), occupancy=options.occupancy, scene=options.scene,
        questions_per_image=options.questions, names=options.names,
    )
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=options.steps, max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0,
        gradient_clip_val=1.0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=options.root,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    fit_seconds = time.perf_counter() - start
    accuracy, per_kind = test_accuracy(module, data.task, options.test_size)
    return {
        "config": config.name, "seed": seed, "accuracy": accuracy, "per_kind": per_kind,
        "fit_seconds": round(fit_seconds, 1), "steps": int(trainer.global_step),
        "tokens_per_image": module.model.tokens_per_image, "flops_per_sample": flops_per_sample(module, data.task),
    }


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for name in dict.fromkeys(r["config"] for r in runs):
        mine = [r for r in runs if r["config"] == name]
        accuracies = [r["accuracy"] for r in mine]
        rows.append({
            "config": name, "description": CONFIGS[name].description, "tokens": mine[0]["tokens_per_image"],
            "seeds": len(mine), "accuracy_mean": statistics.mean(accuracies),
            "accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "gflops_per_sample": mine[0]["flops_per_sample"] / 1e9,
            "fit_seconds_mean": statistics.mean(r["fit_seconds"] for r in mine),
            "per_kind": {k: statistics.mean(r["per_kind"][k] for r in mine) for k in mine[0]["per_kind"]},
        })
    return rows


def ordering_checks(rows: list[dict]) -> list[str]:
    """The paper's ordering, as far as the configurations that ran allow."""
    acc = {r["config"]: 100 * r["accuracy_mean"] for r in rows}
    checks = []

    def check(text: str, holds: bool) -> None:
        checks.append(f"{'yes' if holds else 'NO '}  {text}")

    if {"a", "d4"} <= acc.keys():
        check(f"(d4) at most 3 points below (a): {acc['d4']:.1f} vs {acc['a']:.1f}", acc["d4"] >= acc["a"] - 3)
    for depth in ("d1", "d2", "d4"):
        if {"c", depth} <= acc.keys():
            check(f"({depth}) >= (c) + 10 points: {acc[depth]:.1f} vs {acc['c']:.1f}", acc[depth] >= acc["c"] + 10)
    if {"b", "c"} <= acc.keys():
        check(f"(c) >= (b): {acc['c']:.1f} vs {acc['b']:.1f}", acc["c"] >= acc["b"])
    depths = [acc[d] for d in ("d1", "d2", "d4") if d in acc]
    if len(depths) > 1:
        check("accuracy rises with pre-fusion depth: " + " <= ".join(f"{v:.1f}" for v in depths), depths == sorted(depths))
    return checks


def markdown(rows: list[dict], options: argparse.Namespace, prior: float, llm_accuracy: dict, checks: list[str]) -> str:
    kinds = list(rows[0]["per_kind"])
    pretrained = (
        f"LLM pre-trained on text for {options.llm_pretrain_steps} steps "
        f"({100 * llm_accuracy['answer_accuracy']:.1f} % on held-out text), pre-fusion init {options.prefusion_init}"
        if options.llm_pretrain_steps else "LLM from scratch"
    )
    lines = [
        f"Settings: {options.steps} steps × batch {options.batch_size} for every configuration, "
        f"seeds {', '.join(map(str, options.seeds))}, test on {options.test_size} held-out scenes; "
        f"{pretrained}; answer prior (no image) {100 * prior:.1f} %.",
        "",
        "| config | | tokens | accuracy % (mean ± std) | " + " | ".join(kinds) + " | GFLOPs / sample | train s |",
        "|---|---|---|---|" + "---|" * len(kinds) + "---|---|",
    ]
    for r in rows:
        per_kind = " | ".join(f"{100 * r['per_kind'][k]:.1f}" for k in kinds)
        lines.append(
            f"| {r['config']} | {r['description']} | {r['tokens']} | {100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f} "
            f"| {per_kind} | {r['gflops_per_sample']:.4f} | {r['fit_seconds_mean']:.0f} |"
        )
    lines += ["", "Paper's ordering:", ""] + [f"- {c}" for c in checks]
    return "\n".join(lines) + "\n"


def write_docs_block(path: Path, text: str) -> None:
    page = path.read_text()
    if DOCS_START not in page or DOCS_END not in page:
        raise ValueError(f"{path} has no {DOCS_START} ... {DOCS_END} block to fill")
    head, rest = page.split(DOCS_START, 1)
    path.write_text(f"{head}{DOCS_START}\n{text}{DOCS_END}{rest.split(DOCS_END, 1)[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=STEPS, help="training steps, the same for every configuration")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--grid", type=int, default=GRID_SIZE, help="cells per side (one encoder patch per cell)")
    parser.add_argument("--cell", type=int, default=8, help="pixels per cell side")
    parser.add_argument("--scene", default=SCENE, choices=["crowded", "distinct"])
    parser.add_argument("--kinds", nargs="+", default=list(QUESTION_KINDS), choices=list(KINDS))
    parser.add_argument(
        "--names", default="cells", choices=list(NAMES), help="cells named by one word (e3) or by row and column words"
    )
    parser.add_argument(
        "--pool-placement", default="before_projector", choices=["before_projector", "after_projector"],
        help="where (b) averages: on the encoder's features, where (c)'s queries attend, or on the projector's output",
    )
    parser.add_argument("--llm-layers", type=int, default=2)
    parser.add_argument("--questions", type=int, default=QUESTIONS, help="question-answer turns per training image")
    parser.add_argument("--occupancy", type=float, default=0.5, help="share of occupied cells in crowded scenes")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the scenes generator (same data for all runs)")
    parser.add_argument("--pretrain-steps", type=int, default=150, help="encoder pre-training steps (0: random frozen encoder)")
    parser.add_argument("--pretrain-batch-size", type=int, default=64)
    parser.add_argument("--pretrain-seed", type=int, default=1000, help="generator seed of the pre-training scenes")
    parser.add_argument(
        "--llm-pretrain-steps", type=int, default=1000, help="text-only LLM pre-training steps (0: the LLM starts from scratch)"
    )
    parser.add_argument("--llm-pretrain-lr", type=float, default=1e-3)
    parser.add_argument(
        "--prefusion-init", default="copy", choices=list(get_args(PreFusionInit)),
        help="pre-fusion layers start from the LLM's layers (beyond its depth: copies that start as the identity), "
        "as copies that all start as the identity, or random (the release)",
    )
    parser.add_argument(
        "--llm-cache", default=None, help="folder that keeps pre-trained LLMs between runs, keyed by their settings "
        "(default: pre-train every time, so the total wall time includes it)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at once, one thread each")
    parser.add_argument("--out", default="benchmarks/results/ablation.json")
    parser.add_argument("--docs", default="docs/results.md", help="page whose ablation block receives the table ('' to skip)")
    parser.add_argument("--plot", default="docs/images/ablation.png")
    parser.add_argument("--root", default="runs/benchmarks/ablation")
    options = parser.parse_args()
    if min(options.steps, options.test_size, options.batch_size, options.jobs, options.pretrain_batch_size) < 1:
        parser.error("--steps, --batch-size, --test-size, --jobs and --pretrain-batch-size must be positive")
    options.image_size = options.grid * options.cell
    if options.llm_pretrain_steps and options.names != "cells":
        parser.error("--llm-pretrain-steps needs --names cells (or 0: an LLM trained from scratch)")
    scenes_task(options)  # a bad grid, cell size or question mix fails here, before any training

    # One thread per process: these models are too small for two threads to help, and runs go in parallel.
    torch.set_num_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        encoder_state, encoder_accuracy = pretrain_encoder(options)
        pretrain_seconds = time.perf_counter() - started
        print(f"encoder pre-trained in {pretrain_seconds:.0f} s; per-patch accuracy "
              + ", ".join(f"{k} {v:.3f}" for k, v in encoder_accuracy.items()), flush=True)
        encoder_path = str(Path(scratch) / "encoder.pt")
        torch.save(encoder_state, encoder_path)
        tokenizer_dir = str(Path(scratch) / "tokenizer")
        build_scenes_tokenizer(options.names).save_pretrained(tokenizer_dir)
        llm_path, llm_accuracy, llm_seconds, llm_cached = None, {}, 0.0, False
        if options.llm_pretrain_steps:
            llm_state, llm_accuracy, llm_seconds, llm_cached = pretrained_llm(options)
            llm_path = str(Path(scratch) / "llm.pt")
            torch.save(llm_state, llm_path)
        jobs = [(CONFIGS[name], seed) for name in options.configs for seed in options.seeds]
        runs = []
        with ProcessPoolExecutor(options.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(run, config, seed, options, tokenizer_dir, encoder_path, llm_path) for config, seed in jobs]
            for future in futures:
                result = future.result()
                runs.append(result)
                print(f"{result['config']:>4} seed {result['seed']}: accuracy {result['accuracy']:.3f}  "
                      f"({result['fit_seconds']:.0f} s)", flush=True)
    prior = answer_prior(scenes_task(options), 20_000, options.test_size)
    rows = summarise(runs)
    checks = ordering_checks(rows)
    table = markdown(rows, options, prior, llm_accuracy, checks)
    total = time.perf_counter() - started
    if llm_cached:  # the budget counts the pre-training as if it had run now
        total += llm_seconds
    cache_note = f" (with the cached LLM's {llm_seconds:.0f} s of pre-training added)" if llm_cached else ""
    print("\n" + table + f"\ntotal wall time {total / 60:.1f} min{cache_note}")

    out = Path(options.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(options).items() if k not in ("out", "docs", "plot", "root")}
    out.write_text(json.dumps({
        "settings": settings, "configs": {n: asdict(CONFIGS[n]) for n in options.configs}, "answer_prior": prior,
        "encoder_pretraining": {"seconds": round(pretrain_seconds, 1), "per_patch_accuracy": encoder_accuracy},
        "llm_pretraining": {"seconds": round(llm_seconds, 1), "from_cache": llm_cached, **llm_accuracy},
        "summary": rows, "checks": checks, "runs": runs, "total_minutes": round(total / 60, 1),
        "machine": {"cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()},
    }, indent=2) + "\n")
    if options.docs:
        write_docs_block(Path(options.docs), table + f"\nTotal wall time {total / 60:.1f} min{cache_note}; JSON: `{out}`.\n")
    bar_chart(
        options.plot, [f"{r['config']}\n{r['tokens']} tok" for r in rows], [r["accuracy_mean"] for r in rows],
        [r["accuracy_std"] for r in rows], f"scenes test accuracy, {options.steps} steps x {options.batch_size}, "
        f"seeds {options.seeds}", "accuracy", reference=prior, reference_label="answer prior (no image)",
    )
    print(f"wrote {out}, {options.plot}" + (f", {options.docs}" if options.docs else ""))


if __name__ == "__main__":
    main()
