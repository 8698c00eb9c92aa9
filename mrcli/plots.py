"""Pictures of runs, evaluations and datasets, drawn from plain numbers.

Every function here takes numbers (lists, arrays, dicts of them) and a path,
draws one figure at a fixed size, and writes PATH (a PNG) and PATH with a
.json suffix beside it: the numbers drawn, the title and the PNG's size in
pixels, so that a test or a notebook reads the numbers rather than the
pixels. Both files are written atomically (docs/design.md §7). Nothing here
knows about runs, datasets or COCOeval: the layers that own the numbers
compute them (mrcli.runs the curves, mrcli.coco the PR curves, confusion
matrix and per-image matches, mrcli.data.stats the dataset statistics).

Headless: figures are `matplotlib.figure.Figure`s rendered by the Agg canvas
directly. pyplot is never imported, so no GUI backend is ever chosen and a
notebook's pyplot state is left alone (matplotlib's "Embedding in a web
application server": Figure without pyplot).

Readable at a glance, in print too: every axis is labelled with its unit;
the main lines (overall PR curve, smoothed losses, AP) are black or dark
grey and told apart by line style and marker, so they survive grayscale
printing; many lines (one per class) take the Okabe-Ito colour-blind-safe
palette (Okabe & Ito 2008) cycled with line styles.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mrcli.files import write_bytes_atomic, write_json_atomic

# Pixels per inch of every PNG: a figure of w x h inches is (w * DPI) x (h * DPI) pixels.
DPI = 100
# Okabe & Ito (2008), "Color Universal Design": told apart with the common
# colour-vision deficiencies. Their yellow (too light on white) and black (the
# main lines' colour) are left out of the colours for many lines.
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7")
# With a line style each as well (6 colours x 4 styles: 12 lines apart), lines
# stay apart in grayscale, where several of the colours turn the same grey.
LINE_STYLES = ("-", "--", "-.", ":")
# The main lines: black and dark grey, told apart by style and marker (grayscale-safe).
MAIN = ({"color": "black", "linestyle": "-", "marker": "o"},
        {"color": "0.35", "linestyle": "--", "marker": "s"},
        {"color": "0.55", "linestyle": ":", "marker": "^"})  # fmt: skip
# At most this many per-class lines get a colour and a legend entry; more are drawn thin and grey.
MAX_LEGEND = 12


def _figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _jsonable(value: Any) -> Any:
    """Numbers as JSON: arrays as lists, NaN and inf as null."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _save(fig: Figure, path: str | os.PathLike[str], title: str, numbers: dict[str, Any]) -> Path:
    """Write the figure as PATH (PNG) and its numbers as PATH.json, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.suptitle(title, fontsize=13, fontweight="bold")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    width, height = (int(round(v * DPI)) for v in fig.get_size_inches())
    write_bytes_atomic(path, buf.getvalue())
    write_json_atomic(path.with_suffix(".json"), _jsonable({"title": title, "size_px": [width, height],
                                                             **numbers}))  # fmt: skip
    return path


def _class_style(k: int) -> dict[str, Any]:
    """Line k of many: a colour-blind-safe colour and a line style, so that
    lines stay apart in grayscale too."""
    return {"color": OKABE_ITO[k % len(OKABE_ITO)], "linestyle": LINE_STYLES[k % len(LINE_STYLES)]}


def smooth(values: Sequence[float], window: int | None = None) -> np.ndarray:
    """A centred moving average (NaN-aware) over `window` points, by default
    about a twentieth of the series: the trend of a noisy loss, without the lag
    of an exponential average."""
    y = np.asarray(values, np.float64)
    n = len(y)
    if n < 3:
        return y.copy()
    window = window or max(3, (n // 20) | 1)
    half = window // 2
    ok = np.isfinite(y)
    c = np.concatenate([[0.0], np.cumsum(np.where(ok, y, 0.0))])
    k = np.concatenate([[0], np.cumsum(ok)])
    lo = np.clip(np.arange(n) - half, 0, n)
    hi = np.clip(np.arange(n) + half + 1, 0, n)
    counts = k[hi] - k[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, (c[hi] - c[lo]) / np.maximum(counts, 1), np.nan)


# --- training ----------------------------------------------------------------------------


def _loss_order(name: str) -> tuple[int, str]:
    order = ("loss", "loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask")
    return (order.index(name) if name in order else len(order), name)


# What each train series is, as an axis label with its unit.
SERIES_LABELS = {
    "loss": "total loss",
    "loss_rpn_cls": "RPN objectness loss (BCE)",
    "loss_rpn_box": "RPN box loss (smooth L1)",
    "loss_cls": "box classifier loss (CE)",
    "loss_box": "box regression loss (smooth L1)",
    "loss_mask": "mask loss (BCE per pixel)",
    "lr": "learning rate",
    "images_per_s": "images / s",
}


def training_curves(path: str | os.PathLike[str], *, train: Mapping[str, Sequence[float]],
                    evals: Mapping[str, Sequence[float]], title: str) -> Path:  # fmt: skip
    """One panel per loss term (raw in light grey, smoothed in black), the
    learning rate, images/s and the periodic eval's box and mask AP, all on
    one step axis. `train` and `evals` map "step" and each series' name to a
    list of values (NaN where a line lacks one)."""
    losses = sorted((k for k in train if k.startswith("loss")), key=_loss_order)
    panels = [*losses, *(k for k in ("lr", "images_per_s") if k in train), "AP"]
    # 3 or 4 columns, whichever leaves fewer empty cells (4 on a tie).
    ncols = min((4, 3), key=lambda c: (-len(panels)) % c)
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig = _figure(4.0 * ncols, 2.9 * nrows)
    axes = fig.subplots(nrows, ncols, sharex=True, squeeze=False).ravel()
    step = np.asarray(train.get("step", []), np.float64)
    drawn: dict[str, Any] = {"train_step": step, "eval_step": list(evals.get("step", []))}
    for ax, name in zip(axes, panels):
        ax.grid(True, color="0.9")
        if name == "AP":
            ax.set_ylabel("AP @[.5:.95] (0-1)")
            estep = np.asarray(evals.get("step", []), np.float64)
            shown = False
            for style, key, label in zip(MAIN, ("segm_AP", "bbox_AP"), ("mask AP", "box AP")):
                if key in evals and len(estep):
                    values = np.asarray(evals[key], np.float64)
                    ax.plot(estep, values, label=label, markersize=4, **style)
                    drawn[key] = values
                    shown = True
            if shown:
                ax.legend(loc="lower right", fontsize=8)
                ax.set_ylim(bottom=0)
            else:
                ax.text(0.5, 0.5, "no periodic eval\n(train.eval_every = 0);\nsee mrcli eval",
                        ha="center", va="center", transform=ax.transAxes, color="0.4")  # fmt: skip
            ax.set_title("eval: box and mask AP", fontsize=10)
            continue
        values = np.asarray(train[name], np.float64)
        ax.set_ylabel(SERIES_LABELS.get(name, name))
        ax.set_title(name, fontsize=10)
        if name.startswith("loss"):
            trend = smooth(values)
            ax.plot(step, values, color="0.75", linewidth=0.8, label="logged")
            ax.plot(step, trend, color="black", linewidth=1.8, label="smoothed")
            finite = values[np.isfinite(values)]
            if finite.size and finite.min() > 0 and finite.max() / finite.min() > 30:
                ax.set_yscale("log")
            drawn[name] = values
            drawn[f"{name}_smoothed"] = trend
        else:
            ax.plot(step, values, color="black", linewidth=1.4)
            if name == "lr":
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
            drawn[name] = values
    if losses:
        axes[0].legend(loc="upper right", fontsize=8)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax in axes[:len(panels)]:
        ax.set_xlabel("step (optimiser steps)")
        ax.tick_params(labelbottom=True)
    return _save(fig, path, title, drawn)


def compare_curves(path: str | os.PathLike[str], runs: Mapping[str, dict[str, Mapping[str, Sequence[float]]]],
                   *, title: str) -> Path:  # fmt: skip
    """Runs overlaid: smoothed total loss, box AP and mask AP against the step.
    `runs` maps a run's label to {"train": series, "eval": series} as in
    `training_curves`."""
    panels = (("loss", "train", "total loss (smoothed)"), ("bbox_AP", "eval", "box AP @[.5:.95] (0-1)"),
              ("segm_AP", "eval", "mask AP @[.5:.95] (0-1)"))  # fmt: skip
    fig = _figure(15, 4.6)
    axes = fig.subplots(1, 3, sharex=True)
    drawn: dict[str, Any] = {"runs": {}}
    markers = ("o", "s", "^", "D", "v", "P", "X", "*")
    for i, (label, series) in enumerate(runs.items()):
        # The first run black and solid, the others a colour and a line style each.
        style = {"color": "black" if i == 0 else OKABE_ITO[(i - 1) % len(OKABE_ITO)],
                 "linestyle": LINE_STYLES[i % len(LINE_STYLES)]}  # fmt: skip
        record: dict[str, Any] = {}
        for ax, (key, part, _) in zip(axes, panels):
            data = series.get(part, {})
            if key not in data or not len(data.get("step", [])):
                continue
            x = np.asarray(data["step"], np.float64)
            y = np.asarray(data[key], np.float64)
            if part == "train":
                y = smooth(y)
                ax.plot(x, y, label=label, linewidth=1.6, **style)
            else:
                ax.plot(x, y, label=label, linewidth=1.6, marker=markers[i % len(markers)],
                        markersize=4, **style)  # fmt: skip
            record[key] = {"step": x, "value": y}
        drawn["runs"][label] = record
    for ax, (key, _, ylabel) in zip(axes, panels):
        ax.set_xlabel("step (optimiser steps)")
        ax.set_ylabel(ylabel)
        ax.grid(True, color="0.9")
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no eval in these runs", ha="center", va="center",
                    transform=ax.transAxes, color="0.4")  # fmt: skip
    axes[0].set_title("training loss", fontsize=10)
    axes[1].set_title("box AP (eval)", fontsize=10)
    axes[2].set_title("mask AP (eval)", fontsize=10)
    for ax in axes[1:]:
        ax.set_ylim(bottom=0)
    return _save(fig, path, title, drawn)


# --- evaluation ----------------------------------------------------------------------------


def pr_curves(path: str | os.PathLike[str], *, recall: Sequence[float],
              per_class: Mapping[str, Mapping[str, Sequence[float]]],
              overall: Mapping[str, Sequence[float]], ap: Mapping[str, Mapping[str, float]],
              title: str) -> Path:  # fmt: skip
    """Two panels, at IoU 0.5 and averaged over IoU 0.5:0.95: a precision-recall
    curve per class and the mean over classes (black, thick). `per_class[name]`
    and `overall` map "iou50" / "iou50_95" to precision at each `recall`;
    `ap[name]` (and `ap["all"]`) the AP of those curves, shown in the legend."""
    fig = _figure(13, 5.6)
    axes = fig.subplots(1, 2, sharey=True)
    r = np.asarray(recall, np.float64)
    many = len(per_class) > MAX_LEGEND
    for ax, key, label in zip(axes, ("iou50", "iou50_95"), ("IoU 0.5", "IoU 0.5:0.95 (mean)")):
        for k, (name, curves) in enumerate(per_class.items()):
            if many:
                ax.plot(r, curves[key], color="0.7", linewidth=0.6)
            else:
                ax.plot(r, curves[key], linewidth=1.3, label=f"{name} ({ap[name][key]:.3f})",
                        **_class_style(k))  # fmt: skip
        ax.plot(r, overall[key], color="black", linewidth=3,
                label=f"all classes ({ap['all'][key]:.3f})")  # fmt: skip
        if many:
            ax.plot([], [], color="0.7", linewidth=0.6, label=f"each of {len(per_class)} classes")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall (fraction of ground-truth instances found)")
        ax.set_title(f"{label}; legend: AP", fontsize=10)
        ax.grid(True, color="0.9")
        ax.legend(loc="lower left", fontsize=8)
    axes[0].set_ylabel("precision (fraction of detections correct)")
    return _save(fig, path, title, {"recall": r, "per_class": per_class, "overall": overall, "ap": ap})


def confusion_matrix(path: str | os.PathLike[str], *, matrix: np.ndarray, names: Sequence[str],
                     normalised: bool, title: str, note: str = "",
                     extra: Mapping[str, Any] | None = None) -> Path:  # fmt: skip
    """A (K+1) x (K+1) confusion matrix: rows the ground truth, columns the
    prediction, the last row and column "background" (false detections and
    missed instances). `normalised`: each row divided by its sum (what became
    of each class's instances; the background row: which classes the false
    detections claim)."""
    m = np.asarray(matrix, np.float64)
    n = len(names)
    rows = m.sum(axis=1, keepdims=True)
    shown = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0) if normalised else m
    side = min(16.0, max(6.0, 0.5 * n + 3.0))
    fig = _figure(side + 1.2, side)
    ax = fig.subplots()
    # Greys: one luminance ramp, so it reads the same in colour and in grayscale.
    image = ax.imshow(shown, cmap="Greys", vmin=0, vmax=1 if normalised else max(1.0, shown.max()))
    fig.colorbar(image, ax=ax, shrink=0.8,
                 label="fraction of the row" if normalised else "instances")  # fmt: skip
    small = {"fontsize": 6} if n > 30 else {}
    ax.set_xticks(range(n), names, rotation=45 if max(map(len, names)) > 3 else 0, ha="right",
                  rotation_mode="anchor", **small)
    ax.set_yticks(range(n), names, **small)
    ax.set_xlabel("predicted class (detections scoring above the threshold)")
    ax.set_ylabel("ground-truth class")
    if n <= 30:
        top = shown.max() if shown.size else 1.0
        for i in range(n):
            for j in range(n):
                if (i == n - 1 and j == n - 1) or m[i, j] == 0:
                    continue  # zeros left blank: the counts that are there stand out
                text = f"{shown[i, j]:.2f}" if normalised else f"{int(m[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8 if n > 12 else 10,
                        color="white" if shown[i, j] > 0.55 * max(top, 1e-9) else "black")  # fmt: skip
    ax.axhline(n - 1.5, color="0.5", linewidth=1)
    ax.axvline(n - 1.5, color="0.5", linewidth=1)
    if note:
        ax.set_title(note, fontsize=9)
    return _save(fig, path, title, {"names": list(names), "rows": "ground truth",
                                    "columns": "prediction", "normalised": normalised,
                                    "matrix": shown, "counts": m.astype(np.int64), **(extra or {})})  # fmt: skip


SIZE_NAMES = ("small", "medium", "large")


def ap_by_size(path: str | os.PathLike[str], *, per_class: Mapping[str, Sequence[float]],
               title: str, ylabel: str) -> Path:  # fmt: skip
    """Grouped bars: for "all" and each class, AP on small / medium / large
    objects (COCO: area < 32², 32²-96², > 96² pixels). Bars are grey levels
    with hatches (grayscale-safe); a size without ground truth is marked n/a."""
    names = list(per_class)
    values = np.asarray([per_class[n] for n in names], np.float64).reshape(len(names), 3)
    fig = _figure(min(18.0, max(8.0, 0.75 * len(names) + 3.0)), 5.0)
    ax = fig.subplots()
    x = np.arange(len(names))
    width = 0.27
    looks = (("0.85", "//"), ("0.55", ".."), ("0.2", ""))
    for s, (size, (colour, hatch)) in enumerate(zip(SIZE_NAMES, looks)):
        v = values[:, s]
        pos = x + (s - 1) * width
        ax.bar(pos, np.nan_to_num(v), width, color=colour, hatch=hatch, edgecolor="black",
               linewidth=0.6, label=size)  # fmt: skip
        for p, value in zip(pos, v):
            if not np.isfinite(value):
                ax.text(p, 0.01, "n/a", ha="center", va="bottom", fontsize=7, rotation=90, color="0.3")
            elif len(names) <= MAX_LEGEND:
                ax.text(p, value + 0.01, f"{value:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, names, rotation=45 if len(names) > 8 else 0, ha="right" if len(names) > 8 else "center",
                  rotation_mode="anchor")
    ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("class (\"all\": the mean over classes)")
    ax.grid(True, axis="y", color="0.9")
    ax.set_axisbelow(True)
    ax.legend(title="object area (px² of the original image)", labels=["small < 32²", "medium 32²-96²", "large > 96²"],
              fontsize=8, title_fontsize=8, loc="upper right")  # fmt: skip
    return _save(fig, path, title, {"sizes": list(SIZE_NAMES),
                                    "ap": {n: values[i] for i, n in enumerate(names)}})  # fmt: skip


@dataclass(frozen=True)
class Panel:
    """One image of a gallery: an RGB image (masks already blended in) and
    boxes drawn over it with their labels, each in a colour and a line style
    (so that kinds of boxes stay apart in grayscale too)."""

    image: np.ndarray  # [h, w, 3] uint8 RGB
    boxes: np.ndarray  # [n, 4] float, xyxy in the image's pixels
    labels: Sequence[str]  # [n]
    colours: Sequence[tuple[int, int, int]]  # [n] RGB 0..255
    styles: Sequence[str]  # [n] matplotlib line styles, e.g. "-", "--", ":"


def gallery(path: str | os.PathLike[str], *, items: Sequence[tuple[str, Panel, Panel]],
            columns: tuple[str, str], title: str, per_row: int = 2,
            legend: Sequence[tuple[str, tuple[int, int, int], str]] = (),
            numbers: Mapping[str, Any] | None = None) -> Path:  # fmt: skip
    """Pairs of images side by side, `per_row` pairs a row: `items` of
    (caption, left panel, right panel). Boxes and labels are drawn by
    matplotlib, so the text is sharp whatever the image's size. `legend`
    names the (colour, line style) pairs the boxes use; `numbers` go to the
    JSON (what the items show)."""
    per_row = max(1, min(per_row, len(items)))
    nrows = max(1, math.ceil(len(items) / per_row))
    width_in = 8.0 * per_row
    panel_in = width_in / (2 * per_row)
    heights = []
    for r in range(nrows):
        row = items[r * per_row:(r + 1) * per_row]
        aspect = max((p.image.shape[0] / max(p.image.shape[1], 1) for _, p, _ in row), default=1.0)
        heights.append(panel_in * aspect + 0.55)
    fig = _figure(width_in, max(2.5, sum(heights) + (0.5 if legend else 0.0) + 0.5))
    if not items:
        fig.text(0.5, 0.5, "no image with an error", ha="center", va="center", fontsize=12)
    else:
        grid = fig.add_gridspec(nrows, 2 * per_row, height_ratios=heights)
        for i, (caption, left, right) in enumerate(items):
            r, c = divmod(i, per_row)
            for j, panel in enumerate((left, right)):
                ax = fig.add_subplot(grid[r, 2 * c + j])
                _draw_panel(ax, panel)
                ax.set_title(f"{caption}\n{columns[j]}" if j == 0 else f"\n{columns[j]}", fontsize=8,
                             loc="left")  # fmt: skip
    if legend:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=tuple(v / 255 for v in rgb), linestyle=style, linewidth=2.5,
                          label=text) for text, rgb, style in legend]  # fmt: skip
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9)
    return _save(fig, path, title, dict(numbers or {}))


def _draw_panel(ax: Any, panel: Panel) -> None:
    from matplotlib.patches import Rectangle

    ax.imshow(panel.image)
    for box, label, colour, style in zip(panel.boxes, panel.labels, panel.colours, panel.styles):
        x1, y1, x2, y2 = (float(v) for v in box)
        c = tuple(v / 255 for v in colour)
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=c, linewidth=1.8,
                               linestyle=style))  # fmt: skip
        # Above the box, or inside it where the box touches the image's top.
        inside = y1 < 0.05 * panel.image.shape[0]
        ax.text(x1, y1, label, fontsize=7, va="top" if inside else "bottom", ha="left", color="black",
                clip_on=True, bbox={"facecolor": c, "alpha": 0.85, "pad": 1.0, "edgecolor": "none"})  # fmt: skip
    ax.set_xticks([])
    ax.set_yticks([])


# --- datasets ------------------------------------------------------------------------------


def bar_counts(path: str | os.PathLike[str], *, names: Sequence[str], counts: Sequence[int],
               title: str, xlabel: str, ylabel: str, extra: Mapping[str, Any] | None = None) -> Path:  # fmt: skip
    """Horizontal bars, one per name (in the given order, top to bottom), with
    the count written at the end of each bar."""
    n = len(names)
    fig = _figure(9, min(30.0, max(3.0, 0.32 * n + 1.6)))
    ax = fig.subplots()
    y = np.arange(n)
    c = np.asarray(counts, np.float64)
    ax.barh(y, c, color="0.35", edgecolor="black", linewidth=0.5)
    ax.set_yticks(y, names, fontsize=9 if n <= 40 else 6)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="x", color="0.9")
    ax.set_axisbelow(True)
    if n <= 60:
        for yi, v in zip(y, c):
            ax.text(v, yi, f" {int(v)}", va="center", fontsize=8)
    ax.set_xlim(0, max(1.0, c.max() if n else 1.0) * 1.15)
    return _save(fig, path, title, {"names": list(names), "counts": [int(v) for v in c], **(extra or {})})


def histogram(path: str | os.PathLike[str], *, edges: Sequence[float], counts: Sequence[int],
              title: str, xlabel: str, ylabel: str, log_x: bool = False,
              lines: Sequence[tuple[float, str]] = (), band: tuple[float, float, str] | None = None,
              extra: Mapping[str, Any] | None = None) -> Path:  # fmt: skip
    """Bars over the bins `edges` (len(counts) + 1), with vertical `lines`
    (value, label; lines sharing a label share a style and a legend entry; a
    value off the axis is named in the legend only) and an optional `band`
    (lo, hi, label) with what lies outside it hatched, e.g. the sizes the
    anchors do not reach."""
    e = np.asarray(edges, np.float64)
    c = np.asarray(counts, np.float64)
    fig = _figure(10, 4.8)
    ax = fig.subplots()
    if band is not None:
        # Hatch what lies outside the band, so the band itself stays clear.
        outside = {"facecolor": "none", "edgecolor": "0.6", "hatch": "//", "linewidth": 0, "zorder": 0}
        if band[0] > e[0]:
            ax.axvspan(e[0], band[0], label=band[2], **outside)
        if band[1] < e[-1]:
            ax.axvspan(band[1], e[-1], label=None if band[0] > e[0] else band[2], **outside)
    ax.bar(e[:-1], c, width=np.diff(e), align="edge", color="0.45", edgecolor="black", linewidth=0.4,
           zorder=2)  # fmt: skip
    ax.set_xlim(e[0], e[-1])
    ax.set_ylim(0, max(1.0, float(c.max()) if c.size else 1.0) * 1.3)  # headroom for the legend
    styles = ("--", ":", "-.", (0, (5, 1, 1, 1)))
    labels = list(dict.fromkeys(label for _, label in lines))
    for value, label in lines:
        style = styles[labels.index(label) % len(styles)]
        first = label in labels and not any(t == label for t in ax.get_legend_handles_labels()[1])
        if e[0] <= value <= e[-1]:
            ax.axvline(value, color="black", linestyle=style, linewidth=1.4,
                       label=label if first else None, zorder=3)  # fmt: skip
        else:
            end = "right" if value > e[-1] else "left"
            ax.plot([], [], color="black", linestyle=style, label=f"{label} (beyond the {end} end)")
    if log_x:
        ax.set_xscale("log", base=2)
        from matplotlib.ticker import FuncFormatter

        ax.xaxis.set_major_formatter(FuncFormatter(_ratio_label))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", color="0.9")
    ax.set_axisbelow(True)
    if lines or band is not None:
        ax.legend(fontsize=8, loc="best", framealpha=0.95)
    return _save(fig, path, title, {"edges": e, "counts": [int(v) for v in c],
                                    "lines": [{"value": v, "label": t} for v, t in lines],
                                    **(extra or {})})  # fmt: skip


def _ratio_label(value: float, _: Any = None) -> str:
    """A log-axis tick: 4, 0.5 as "1/2"."""
    if 0 < value < 1 and abs(1 / value - round(1 / value)) < 1e-9:
        return f"1/{round(1 / value)}"
    return f"{value:g}"


def scatter(path: str | os.PathLike[str], *, x: Sequence[float], y: Sequence[float], title: str,
            xlabel: str, ylabel: str, extra: Mapping[str, Any] | None = None) -> Path:  # fmt: skip
    """Points (e.g. image widths against heights), each point's count shown by
    its size where several coincide."""
    xy = np.stack([np.asarray(x, np.float64), np.asarray(y, np.float64)], axis=1) if len(x) else np.zeros((0, 2))
    points, counts = np.unique(xy, axis=0, return_counts=True) if len(xy) else (xy, np.zeros(0))
    fig = _figure(7, 6)
    ax = fig.subplots()
    sizes = 12 + 60 * np.sqrt(counts / max(1, counts.max() if len(counts) else 1))
    ax.scatter(points[:, 0], points[:, 1], s=sizes, color="0.2", alpha=0.5, edgecolor="none")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, color="0.9")
    top = max(float(points.max()) if len(points) else 1.0, 1.0) * 1.08
    ax.set_xlim(0, top)  # the same scale on both axes: a square image lies on the diagonal
    ax.set_ylim(0, top)
    ax.plot([0, top], [0, top], color="0.6", linewidth=0.8, linestyle=":", label="square images")
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path, title, {"points": points, "counts": counts.astype(np.int64), **(extra or {})})
