"""Peak memory of one loss forward + backward: full logits vs minivlm's chunked loss.

    .venv/bin/python benchmarks/loss_memory.py [--tokens 2048] [--vocab 128256]

Each variant runs in a fresh process (hidden width 64, one sequence, every position a
label: the worst case for the label-positions-only loss); the number is the growth of
peak resident memory during the step. Prints a table and writes
benchmarks/results/loss_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STEP = """
import json, resource, sys, torch
from torch import nn
from torch.nn import functional as F
from minivlm.model.loss import next_token_loss
torch.manual_seed(0)
mode, t, v, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), 64
hidden = torch.randn(1, t, d, requires_grad=True)
head = nn.Linear(d, v, bias=False)
labels = torch.randint(0, v, (1, t))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if mode == "full":
    loss = F.cross_entropy(head(hidden)[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())
else:
    total, count = next_token_loss(hidden, head, labels, v)
    loss = total / count
loss.backward()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_mib": (after - before) / 1024, "loss": float(loss)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=128_256)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "loss_memory.json"))
    options = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    rows = []
    for mode in ("full", "chunked"):
        out = subprocess.run(
            [sys.executable, "-c", STEP, mode, str(options.tokens), str(options.vocab)],
            env=env, capture_output=True, text=True, check=True,
        )
        measured = json.loads(out.stdout)
        rows.append({"variant": mode, "peak_mib": round(measured["peak_mib"]), "loss_value": measured["loss"]})
    logits_mib = options.tokens * options.vocab * 4 / 2**20
    print(f"{options.tokens} tokens, vocabulary {options.vocab}: one fp32 logits tensor is {logits_mib:.0f} MiB")
    print(f"{'loss':<8} {'peak MiB':>9} {'value':>10}")
    for row in rows:
        print(f"{row['variant']:<8} {row['peak_mib']:>9} {row['loss_value']:>10.6f}")
    result = {"tokens": options.tokens, "vocab": options.vocab, "logits_fp32_mib": round(logits_mib), "runs": rows}
    Path(options.out).parent.mkdir(parents=True, exist_ok=True)
    Path(options.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {options.out}")


if __name__ == "__main__":
    main()
