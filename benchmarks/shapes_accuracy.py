"""Does visual information cross one token? Train the tiny-shapes recipe twice, once with the
real images and once with every image blanked (the text-only baseline), and compare
validation exact-match accuracy.

    .venv/bin/python benchmarks/shapes_accuracy.py [--recipe recipes/tiny-shapes.yaml] [--max-steps N]

Prints a table and writes benchmarks/results/shapes_accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from minivlm.cli import MiniVLMCLI
from minivlm.training.module import MiniVLMModule


def train_and_validate(recipe: str, blank: bool, max_steps: int | None, root: Path) -> dict:
    args = ["--config", recipe, f"--data.init_args.blank_images={str(blank).lower()}"]
    args += [f"--trainer.default_root_dir={root / ('blank' if blank else 'images')}", "--trainer.logger=false"]
    if max_steps is not None:
        args.append(f"--trainer.max_steps={max_steps}")
    cli = MiniVLMCLI(MiniVLMModule, subclass_mode_data=True, args=args, run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    fit_seconds = time.perf_counter() - start
    metrics = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    return {
        "images": "blank" if blank else "real",
        "val_exact_match": round(float(metrics["val/exact_match"]), 4),
        "val_loss": round(float(metrics["val/loss"]), 4),
        "steps": int(cli.trainer.global_step),
        "fit_seconds": round(fit_seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/tiny-shapes.yaml")
    parser.add_argument("--max-steps", type=int, default=None, help="override the recipe's trainer.max_steps")
    parser.add_argument("--out", default="benchmarks/results/shapes_accuracy.json")
    parser.add_argument("--root", default="runs/benchmarks/shapes_accuracy")
    options = parser.parse_args()

    rows = [train_and_validate(options.recipe, blank, options.max_steps, Path(options.root)) for blank in (False, True)]
    gap = rows[0]["val_exact_match"] - rows[1]["val_exact_match"]
    print(f"\n{'images':<8} {'val exact match':>16} {'val loss':>9} {'steps':>6} {'fit s':>7}")
    for row in rows:
        print(f"{row['images']:<8} {row['val_exact_match']:>16.3f} {row['val_loss']:>9.3f} {row['steps']:>6} {row['fit_seconds']:>7.1f}")
    print(f"gap (real - blank): {100 * gap:.1f} points")

    result = {
        "recipe": options.recipe,
        "runs": rows,
        "gap_points": round(100 * gap, 1),
        "machine": {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()},
    }
    out = Path(options.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
