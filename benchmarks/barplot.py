"""A bar chart with error bars drawn with Pillow (a dependency already), so benchmarks need no plotting library."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 900, 480
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 70, 20, 50, 90


def bar_chart(
    path: str | Path,
    labels: list[str],
    values: list[float],
    errors: list[float],
    title: str,
    y_label: str,
    reference: float | None = None,
    reference_label: str = "",
) -> None:
    """Bars of `values` (in [0, 1]) with ± `errors` whiskers; an optional dashed reference line."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    bottom = MARGIN_TOP + plot_h

    def y_of(value: float) -> float:
        return bottom - max(0.0, min(1.0, value)) * plot_h

    draw.text((MARGIN_LEFT, 15), title, fill="black", font=font)
    draw.text((5, MARGIN_TOP - 20), y_label, fill="black", font=font)
    for tick in range(0, 11, 2):
        y = y_of(tick / 10)
        draw.line([(MARGIN_LEFT - 5, y), (WIDTH - MARGIN_RIGHT, y)], fill=(225, 225, 225))
        draw.text((MARGIN_LEFT - 35, y - 6), f"{tick / 10:.1f}", fill="black", font=font)
    draw.line([(MARGIN_LEFT, MARGIN_TOP), (MARGIN_LEFT, bottom), (WIDTH - MARGIN_RIGHT, bottom)], fill="black")
    slot = plot_w / max(1, len(values))
    for i, (label, value, error) in enumerate(zip(labels, values, errors)):
        left = MARGIN_LEFT + i * slot + slot * 0.15
        right = MARGIN_LEFT + (i + 1) * slot - slot * 0.15
        draw.rectangle([left, y_of(value), right, bottom], fill=(70, 110, 190))
        centre = (left + right) / 2
        draw.line([(centre, y_of(value - error)), (centre, y_of(value + error))], fill="black", width=2)
        for y in (y_of(value - error), y_of(value + error)):
            draw.line([(centre - 6, y), (centre + 6, y)], fill="black", width=2)
        draw.text((centre - 14, y_of(value + error) - 14), f"{value:.2f}", fill="black", font=font)
        for line, text in enumerate(label.split("\n")):
            draw.text((left, bottom + 8 + 12 * line), text, fill="black", font=font)
    if reference is not None:
        y = y_of(reference)
        for x in range(MARGIN_LEFT, WIDTH - MARGIN_RIGHT, 12):
            draw.line([(x, y), (x + 6, y)], fill=(200, 60, 60), width=2)
        draw.text((WIDTH - MARGIN_RIGHT - 200, y - 14), reference_label, fill=(200, 60, 60), font=font)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
