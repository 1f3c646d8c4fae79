"""The training picture: loss per step (mean over windows) and validation MSE per factor, one PNG.

Drawn with Pillow alone (no plotting library is a dependency).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageDraw

from naf_cli.disk import replacing

WIDTH, HEIGHT, MARGIN = 800, 420, 50
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]


def _read(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _series(
    loss_rows: list[dict[str, str]], validation_rows: list[dict[str, str]], group: str, value: str, label: str,
) -> dict[str, list[tuple[float, float]]]:
    series: dict[str, list[tuple[float, float]]] = {}
    if loss_rows:
        window = max(1, len(loss_rows) // 100)
        means = []
        for start in range(0, len(loss_rows), window):
            chunk = loss_rows[start:start + window]
            means.append((float(chunk[-1]["step"]), sum(float(r["loss"]) for r in chunk) / len(chunk)))
        series[f"training loss (mean of {window} steps)"] = means
    by_factor: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in validation_rows:
        by_factor[label.format(row[group])].append((float(row["step"]), float(row[value])))
    series.update(by_factor)
    return series


def draw_curves(
    loss_csv: Path | None, validation_csv: Path | None, out: Path, group: str = "factor", value: str = "mse",
    label: str = "validation MSE x{}",
) -> None:
    """Write ``out`` (PNG): every series against the step, one shared linear y axis.

    The training loss (when ``loss_csv`` is given) and (when ``validation_csv`` is) one validation series per distinct
    ``group`` column value, of its ``value`` column, named by ``label``.
    """
    series = _series(_read(loss_csv) if loss_csv else [], _read(validation_csv) if validation_csv else [], group, value, label)
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    points = [p for values in series.values() for p in values]
    if not points:
        with replacing(out) as tmp:
            image.save(tmp, "PNG")
        return
    x0, x1 = 0.0, max(p[0] for p in points) or 1.0
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    y0, y1 = (y0 - 1, y1 + 1) if y0 == y1 else (y0, y1)

    def at(x: float, y: float) -> tuple[float, float]:
        return (MARGIN + (x - x0) / (x1 - x0) * (WIDTH - 2 * MARGIN),
                HEIGHT - MARGIN - (y - y0) / (y1 - y0) * (HEIGHT - 2 * MARGIN))

    draw.rectangle([MARGIN, MARGIN, WIDTH - MARGIN, HEIGHT - MARGIN], outline="black")
    for fraction in (0.0, 0.5, 1.0):
        y = y0 + fraction * (y1 - y0)
        draw.text((4, at(x0, y)[1] - 6), f"{y:.2f}", fill="black")
        x = x0 + fraction * (x1 - x0)
        draw.text((at(x, y0)[0] - 10, HEIGHT - MARGIN + 6), f"{x:.0f}", fill="black")
    draw.text((WIDTH // 2 - 15, HEIGHT - 18), "step", fill="black")
    for index, (name, values) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        line = [at(x, y) for x, y in values]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        for x, y in line:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        draw.text((MARGIN + 8, MARGIN + 6 + 14 * index), name, fill=colour)
    with replacing(out) as tmp:
        image.save(tmp, "PNG")
