"""A PNG of FLOPs and latency against vision tokens per image (the paper's Figure 7), drawn with
Pillow, which minivlm already depends on (matplotlib is not a dependency)."""

from __future__ import annotations

import math
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont

from minivlm.profiling.flops import si

if TYPE_CHECKING:
    from minivlm.profiling.report import RecipeProfile

PANEL_W, PANEL_H, MARGIN = 520, 380, 64
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def _panel(
    draw: ImageDraw.ImageDraw,
    left: int,
    title: str,
    series: list[tuple[str, list[tuple[int, float]], bool]],
    tick: Callable[[float], str],
) -> None:
    """One log-x panel. `series`: (label, [(tokens, value)], joined by a line)."""
    font = ImageFont.load_default()
    x0, y0, x1, y1 = left + MARGIN, MARGIN // 2, left + PANEL_W - 16, PANEL_H - MARGIN
    draw.rectangle([x0, y0, x1, y1], outline="black")
    draw.text((x0, 6), title, fill="black", font=font)
    points = [pt for _, pts, _ in series for pt in pts]
    if not points:
        draw.text((x0 + 10, (y0 + y1) // 2), "not measured", fill="gray", font=font)
        return
    lo_x, hi_x = math.log2(min(p[0] for p in points)), math.log2(max(p[0] for p in points))
    hi_y = max(p[1] for p in points) * 1.1 or 1.0
    span_x = max(hi_x - lo_x, 1.0)

    def at(tokens: int, value: float) -> tuple[float, float]:
        x = x0 + 20 + (math.log2(tokens) - lo_x) / span_x * (x1 - x0 - 40)
        return x, y1 - value / hi_y * (y1 - y0)

    for tokens in sorted({p[0] for p in points}):
        x, _ = at(tokens, 0)
        draw.line([x, y1, x, y1 + 4], fill="black")
        draw.text((x - 8, y1 + 6), str(tokens), fill="black", font=font)
    for i in range(5):
        value = hi_y * i / 4
        _, y = at(1, value)
        draw.line([x0 - 4, y, x0, y], fill="black")
        draw.text((left + 4, y - 6), tick(value), fill="black", font=font)
    draw.text((x0 + 60, y1 + 24), "vision tokens per image (log scale)", fill="black", font=font)
    for i, (label, pts, joined) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        xy = [at(t, v) for t, v in sorted(pts)]
        if joined and len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for x, y in xy:
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
        draw.text((x0 + 8, y0 + 6 + 14 * i), label, fill=colour, font=font)


def plot_profiles(profiles: list[RecipeProfile], sweep: list[RecipeProfile], path: str | Path) -> None:
    """Left: prefill TFLOPs; right: time to first token (ms), each against vision tokens per image.
    The sweep is one joined line; every other recipe is a labelled point."""

    def series(metric) -> list[tuple[str, list[tuple[int, float]], bool]]:
        out = []
        if sweep:
            pts = [(p.tokens_per_image, metric(p)) for p in sweep if metric(p) is not None]
            out.append((sweep[0].name.rsplit(" @", 1)[0] + " (sweep)", pts, True))
        for p in profiles:
            if metric(p) is not None:
                out.append((p.name, [(p.tokens_per_image, metric(p))], False))
        return out

    image = Image.new("RGB", (2 * PANEL_W, PANEL_H), "white")
    draw = ImageDraw.Draw(image)
    _panel(draw, 0, "prefill FLOPs", series(lambda p: p.flops.prefill), si)
    ttft = series(lambda p: p.latency.ttft_ms if p.latency else None)
    _panel(draw, PANEL_W, "time to first token (ms)", ttft, lambda v: f"{v:.3g}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
