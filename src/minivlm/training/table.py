"""The one table a run prints at start: what each part is, how big, what trains, how fast, in what dtype."""

from __future__ import annotations

from typing import TYPE_CHECKING

from minivlm.training.stages import PARTS

if TYPE_CHECKING:
    from minivlm.training.module import MiniVLMModule

HEADER = ("part", "class", "parameters", "trainable", "lr", "dtype")


def parts_rows(module: MiniVLMModule) -> list[tuple[str, str, int, int, str, str]]:
    """(part, class, parameters, trainable parameters, learning rate, dtypes) for each part."""
    trainable = {part: {id(p) for p in params} for part, params in module.trainable_parameters(require_adapters=False).items()}
    rows = []
    for part in PARTS:
        params = list(module.part(part).parameters())
        setting = module.stage.of(part)
        lr = "-" if setting.mode == "frozen" else f"{setting.lr:g} ({setting.mode})"
        dtypes = ",".join(sorted({str(p.dtype).removeprefix("torch.") for p in params})) or "-"
        count = sum(p.numel() for p in params)
        trained = sum(p.numel() for p in params if id(p) in trainable.get(part, ()))
        rows.append((part, type(module.part(part)).__name__, count, trained, lr, dtypes))
    return rows


def parts_table(module: MiniVLMModule) -> str:
    rows = [HEADER] + [(p, c, f"{n:,}", f"{t:,}", lr, d) for p, c, n, t, lr, d in parts_rows(module)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = ("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)
