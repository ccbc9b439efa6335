"""Matplotlib figures of the book: interpolation curves, barrier sweeps, variance ratios, channel stats, filters.

Every function builds a fresh ``matplotlib.figure.Figure`` (not registered with pyplot, so a notebook
shows it exactly once, as the cell's value, and nothing needs ``plt.show``), labels its axes, adds a
legend below the axes (outside the data) when there is more than one series, puts ticks at whole
numbers where the axis counts layers or depths, and returns it. Values may be lists, NumPy arrays or
torch tensors. ``styles`` maps a series label to extra ``Axes.plot`` keywords, e.g.
``{"before REPAIR": {"linestyle": "--"}}``.
"""

from __future__ import annotations

import math
import os
import sys

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

if "MPLBACKEND" not in os.environ and "ipykernel" not in sys.modules and not os.environ.get("DISPLAY"):
    matplotlib.use("Agg")  # no display: render off-screen (a notebook keeps its inline backend)

ALPHA_LABEL = r"interpolation coefficient $\alpha$"
# How the book shows a figure: a PNG at BOOK_DPI with a tight bounding box (the notebooks' display
# formatter below), shrunk by the browser to the text column when it is wider than COLUMN_PX
# (book/_static/wrap.css, tests/test_pages.py). Every text of a figure made here is at least
# MIN_FONT_PT once shrunk (tests/test_plots.py measures it with :func:`rendered_font_sizes`).
BOOK_DPI = 110
COLUMN_PX = 740
MIN_FONT_PT = 9.0
# The widest figure that the column shows unshrunk: COLUMN_PX / BOOK_DPI = 6.7 in, less the few
# hundredths of an inch that the tight bounding box adds around the outside legend.
MAX_WIDTH_IN = 6.5
DATASET_LABELS = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "svhn": "SVHN", "cifar10": "CIFAR-10",
                  "cifar100": "CIFAR-100", "imagenet": "ImageNet"}


def dataset_label(name: str) -> str:
    """A data set's name for a title: "fashion_mnist" -> "Fashion-MNIST" (other names unchanged)."""
    return DATASET_LABELS.get(str(name).lower().replace("-", "_"), str(name))


def _show_figures_in_notebooks() -> None:
    """Make IPython render a returned Figure as a PNG (pyplot's inline backend is never loaded here)."""
    try:
        from IPython import get_ipython
        from IPython.core.pylabtools import print_figure
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        shell.display_formatter.formatters["image/png"].for_type(
            Figure, lambda fig: print_figure(fig, "png", bbox_inches="tight", dpi=BOOK_DPI))


_show_figures_in_notebooks()


def _floats(values) -> np.ndarray:
    """A tensor (any device) or array-like as a float numpy array."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=float)


def _weights4(weights, what: str) -> np.ndarray:
    """Conv weights ``[C, in, kh, kw]`` as a float numpy array."""
    w = _floats(weights)
    if w.ndim != 4:
        raise ValueError(f"{what} must have shape [C, in, kh, kw], got {w.shape}")
    return w


def _array(values, what: str) -> np.ndarray:
    array = _floats(values)
    if array.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {array.shape}")
    return array


def _series(xs, series: dict, what: str) -> tuple:
    if not series:
        raise ValueError(f"{what}: series is empty; pass {{label: values}}")
    xs = _array(xs, "x values")
    out = {}
    for label, values in series.items():
        values = _array(values, f"series {label!r}")
        if len(values) != len(xs):
            raise ValueError(f"series {label!r} has {len(values)} values for {len(xs)} x values")
        out[label] = values
    return xs, out


def _figure(figsize=(5.0, 3.4)):
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _finish(fig, ax, xlabel, ylabel, title, n_series):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if n_series > 1:  # below the axes, never over the data
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=min(n_series, 2),
                   frameon=False)
    ax.grid(alpha=0.3)
    return fig


def curve(alphas, series: dict, ylabel: str, title: str | None = None, xlabel: str = ALPHA_LABEL,
          styles: dict | None = None) -> Figure:
    """Performance along the interpolation path: one line per series over ``alphas`` (Figs. 3-5, 7, 14).

    ``series``: {label: values at each alpha}, e.g. {"before REPAIR": accs, "after REPAIR": accs}.
    """
    alphas, series = _series(alphas, series, "curve")
    fig, ax = _figure()
    for label, values in series.items():
        ax.plot(alphas, values, marker="o", markersize=3, label=label, **(styles or {}).get(label, {}))
    return _finish(fig, ax, xlabel, ylabel, title, len(series))


def barrier_vs(xs, series: dict, xlabel: str, ylabel: str, log2: bool = False, title: str | None = None,
               styles: dict | None = None) -> Figure:
    """A barrier (or accuracy) against width or depth, one line per series (Figs. 4 left, 6, 12).

    ``log2=True`` puts x on a base-2 log axis with the x values as tick labels (widths 1, 2, 4, ...).
    """
    xs, series = _series(xs, series, "barrier_vs")
    if log2 and (xs <= 0).any():
        raise ValueError("log2 axis needs positive x values")
    fig, ax = _figure()
    for label, values in series.items():
        ax.plot(xs, values, marker="o", markersize=4, label=label, **(styles or {}).get(label, {}))
    if log2:
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.minorticks_off()
    elif np.all(xs == np.round(xs)):  # depths, layer counts: a tick at each measured whole number
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.axhline(0.0, color="0.5", linewidth=0.8)
    return _finish(fig, ax, xlabel, ylabel, title, len(series))


def before_after(points: dict, xlabel: str, ylabel: str, title: str | None = None) -> Figure:
    """Barrier before (x) against after (y) a correction, one marker per setting (Fig. 1 right).

    ``points``: {label: [(before, after, size), ...]}: one series per architecture / data set /
    normalisation, each point a width, ``size`` its rank (wider networks get larger markers, as in the
    paper). The diagonal is "no change"; points below it are barriers the correction lowered.
    """
    if not points or not any(points.values()):
        raise ValueError("before_after needs at least one point")
    fig, ax = _figure((5.0, 4.2))
    values = [v for series in points.values() for p in series for v in p[:2]]
    low, high = min(0.0, *values), max(values)
    ax.plot([low, high], [low, high], color="0.5", linewidth=0.8, linestyle=":")
    for label, series in points.items():
        before, after, size = (np.array([p[i] for p in series], dtype=float) for i in range(3))
        ax.scatter(before, after, s=12 + 18 * size, label=label, alpha=0.8)
    return _finish(fig, ax, xlabel, ylabel, title, len(points))


def layer_ratios(series: dict, title: str | None = None, ylabel: str | None = None,
                 styles: dict | None = None, logy: bool = False) -> Figure:
    """Variance collapse (Figs. 1 left, 2): per-layer ratio v_alpha / ((v_1 + v_2) / 2), layer by layer.

    ``series``: {label: [ratio of layer 1, layer 2, ...]}; series may have different lengths (depths).
    A dotted line marks 1, the ratio of a network without collapse.
    """
    if not series:
        raise ValueError("layer_ratios: series is empty; pass {label: ratios}")
    fig, ax = _figure()
    for label, ratios in series.items():
        ratios = _array(ratios, f"series {label!r}")
        ax.plot(np.arange(1, len(ratios) + 1), ratios, marker="o", markersize=3, label=label,
                **(styles or {}).get(label, {}))
    ax.axhline(1.0, color="0.4", linestyle=":", linewidth=1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are whole numbers
    if logy:
        ax.set_yscale("log")
    ylabel = ylabel or r"variance ratio $v_\alpha \,/\, \frac{v_1 + v_2}{2}$"
    return _finish(fig, ax, "layer", ylabel, title, len(series))


def channel_stats(goal, series: dict, title: str | None = None,
                  xlabel: str = "channel std in the endpoints (goal)",
                  ylabel: str = "channel std in the interpolated network") -> Figure:
    """Per-channel statistics before/after REPAIR against their goal (Fig. 3 left): one point per channel.

    ``goal``: [C] the target per channel, (1 - alpha) std_1 + alpha std_2 (paper Eq. 4);
    ``series``: {label: [C] the measured std of each channel}, e.g. before and after REPAIR.
    Points on the diagonal have exactly the endpoints' statistics.
    """
    goal, series = _series(goal, series, "channel_stats")
    fig, ax = _figure(figsize=(4.2, 4.0))
    for label, values in series.items():
        ax.scatter(goal, values, s=10, alpha=0.7, label=label)
    top = max(float(goal.max()), *(float(v.max()) for v in series.values()))
    ax.plot([0, top], [0, top], color="0.4", linestyle=":", linewidth=1, label="goal")
    ax.set_xlim(0, top * 1.05)
    ax.set_ylim(0, top * 1.05)
    return _finish(fig, ax, xlabel, ylabel, title, len(series) + 1)


def _filter_grid(weights, ncols: int | None) -> np.ndarray:
    """[C, in, kh, kw] -> one [rows*(kh+1), cols*(kw+1), 3] RGB image, each filter scaled to [0, 1]."""
    w = _weights4(weights, "filters")
    c, cin, kh, kw = w.shape
    w = w[:, :3] if cin >= 3 else np.repeat(w[:, :1], 3, axis=1)  # RGB, or grey from the first input
    low = w.min(axis=(1, 2, 3), keepdims=True)
    span = w.max(axis=(1, 2, 3), keepdims=True) - low
    w = (w - low) / np.where(span > 0, span, 1.0)
    ncols = ncols or math.ceil(math.sqrt(c))
    nrows = math.ceil(c / ncols)
    grid = np.ones((nrows * (kh + 1) - 1, ncols * (kw + 1) - 1, 3))
    for i in range(c):
        r, q = divmod(i, ncols)
        grid[r * (kh + 1): r * (kh + 1) + kh, q * (kw + 1): q * (kw + 1) + kw] = w[i].transpose(1, 2, 0)
    return grid


def filters(weights, title: str | None = None, ncols: int | None = None) -> Figure:
    """First-layer convolution filters as an image grid (Fig. 9), each filter scaled to its own range.

    ``weights``: [C, in, kh, kw] (3 inputs shown as RGB, otherwise the first input in grey), or a
    dict {panel label: weights} for side-by-side panels, e.g. A, B aligned to A, B as trained.
    """
    panels = weights if isinstance(weights, dict) else {title or "": weights}
    if not panels:
        raise ValueError("filters: no weights given")
    fig = Figure(figsize=(min(3.2 * len(panels), MAX_WIDTH_IN), 3.4 if len(panels) < 3 else 2.9),
                 layout="constrained")
    for i, (label, w) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.imshow(_filter_grid(w, ncols), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{len(w)} filters")
        if label:
            ax.set_title(label)
    if title and isinstance(weights, dict):
        fig.suptitle(title)
    return fig


def sweep_panels(xs, panels: dict, xlabel: str, log2: bool = False, styles: dict | None = None) -> Figure:
    """Side-by-side panels over the same x values, one legend below them (e.g. accuracy and loss against
    the number of merged networks). ``panels``: {title: (ylabel, {label: values at each x})}; every panel
    should use the same labels. ``log2`` as in :func:`barrier_vs`."""
    if not panels:
        raise ValueError("sweep_panels: no panels given")
    fig = Figure(figsize=(3.6 * len(panels), 3.4), layout="constrained")
    for i, (title, (ylabel, series)) in enumerate(panels.items()):
        x, series = _series(xs, series, f"panel {title!r}")
        ax = fig.add_subplot(1, len(panels), i + 1)
        for label, values in series.items():
            ax.plot(x, values, marker="o", markersize=4, label=label, **(styles or {}).get(label, {}))
        if log2:
            ax.set_xscale("log", base=2)
            ax.minorticks_off()
        ax.set_xticks(x, [f"{v:g}" for v in x])
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    if len(labels) > 1:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), frameon=False)
    return fig


def grouped_bars(groups: dict, ylabel: str, title: str | None = None) -> Figure:
    """Bars in groups: ``groups`` = {group label: {bar label: value or None}}; a None bar is left out
    (e.g. a correction that does not apply to that network). Each bar label keeps one colour."""
    if not groups:
        raise ValueError("grouped_bars: no groups given")
    labels = list(dict.fromkeys(k for bars in groups.values() for k in bars))
    fig, ax = _figure(figsize=(1.1 + 1.3 * len(groups), 3.6))
    width = 0.8 / len(labels)
    for j, label in enumerate(labels):
        xs = [i + (j - (len(labels) - 1) / 2) * width for i, bars in enumerate(groups.values())
              if bars.get(label) is not None]
        ys = [bars[label] for bars in groups.values() if bars.get(label) is not None]
        ax.bar(xs, ys, width, label=label, color=f"C{j}")
    ax.set_xticks(range(len(groups)), list(groups))  # default size: >= 9 pt in the column (tests/test_plots.py)
    return _finish(fig, ax, "", ylabel, title, len(labels))


def _signed_unit(w: np.ndarray) -> np.ndarray:
    """Each filter (the first axis) divided by its own largest magnitude: values in [-1, 1], 0 stays 0."""
    top = np.abs(w).max(axis=tuple(range(1, w.ndim)), keepdims=True)
    return w / np.where(top > 0, top, 1.0)


def _correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of filter i of ``a`` with filter i of ``b``, over all their weights."""
    a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(1, keepdims=True)
    b = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(1, keepdims=True)
    norm = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.where(norm > 0, norm, 1.0)


def filter_pairs(a, b, unaligned=None, title: str | None = None, labels=("A", "B"), ncols: int = 8,
                 max_pairs: int | None = None, order: str = "similarity") -> Figure:
    """Aligned first-layer filters side by side (Fig. 9): filter i of ``a`` next to filter i of ``b``.

    ``a``, ``b``: [C, in, kh, kw] weights, ``b`` already permuted to align with ``a`` (``permute(b,
    alignment)``). Each filter is scaled by its own largest magnitude, so that every filter uses the
    whole colour range and zero keeps one colour: grey filters (one input, or more than three) on a
    diverging map (red positive, blue negative, white zero), three inputs as RGB around mid-grey.
    Under each pair its correlation (Pearson, over the filter's weights); ``order="similarity"``
    (default) puts the best-matched pairs first, ``order="index"`` keeps a's order. ``unaligned``
    (optional: ``b`` in its trained order) adds the mean correlation of the unaligned pairs to the
    subtitle, for comparison. ``max_pairs`` shows only the first so many pairs.
    """
    a, b = _weights4(a, "a"), _weights4(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    if order not in ("similarity", "index"):
        raise ValueError(f"order must be 'similarity' or 'index', got {order!r}")
    corr = _correlations(a, b)
    index = np.argsort(-corr, kind="stable") if order == "similarity" else np.arange(len(a))
    index = index[:max_pairs] if max_pairs else index
    c, cin, kh, kw = a.shape
    rgb = cin == 3
    pick = (lambda w: w) if rgb else (lambda w: w[:, :1])  # grey: the first input channel
    sa, sb = _signed_unit(pick(a)), _signed_unit(pick(b))
    ncols = max(1, min(ncols, len(index)))
    nrows = math.ceil(len(index) / ncols)
    gap, pair_gap, label_gap = 1, 3, max(4, kh * 3 // 4)  # data units (filter pixels)
    cell_w, cell_h = 2 * kw + gap + pair_gap, kh + label_gap
    grid = np.zeros((nrows * cell_h, ncols * cell_w - pair_gap, 3 if rgb else 1))
    for k, i in enumerate(index):
        r, q = divmod(k, ncols)
        y, x = r * cell_h, q * cell_w
        grid[y:y + kh, x:x + kw] = sa[i].transpose(1, 2, 0)
        grid[y:y + kh, x + kw + gap:x + 2 * kw + gap] = sb[i].transpose(1, 2, 0)
    width = MAX_WIDTH_IN
    height = min(8.0, 1.1 + width * grid.shape[0] / grid.shape[1])
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot()
    if rgb:  # [-1, 1] -> [0, 1]; the gaps (0) are mid-grey like a zero weight, so paint them white
        image = 0.5 + 0.5 * grid
        mask = np.ones(grid.shape[:2], bool)
        for k in range(len(index)):
            r, q = divmod(k, ncols)
            mask[r * cell_h:r * cell_h + kh, q * cell_w:q * cell_w + 2 * kw + gap] = False
        image[mask] = 1.0
        ax.imshow(image, interpolation="nearest")
    else:
        ax.imshow(grid[..., 0], cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    from matplotlib.patches import Rectangle

    for k, i in enumerate(index):
        r, q = divmod(k, ncols)
        for x in (q * cell_w, q * cell_w + kw + gap):  # a thin frame around each filter
            ax.add_patch(Rectangle((x - 0.5, r * cell_h - 0.5), kw, kh, fill=False, linewidth=0.6,
                                   edgecolor="0.45"))
        ax.text(q * cell_w + kw + gap / 2 - 0.5, r * cell_h + kh - 0.5 + label_gap * 0.45, f"{corr[i]:.2f}",
                ha="center", va="center", fontsize=MIN_FONT_PT)
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    subtitle = (f"each pair: filter i of {labels[0]} (left) and of {labels[1]} aligned to {labels[0]} "
                f"(right), with their correlation;\nmean correlation {corr.mean():.2f} aligned")
    if unaligned is not None:
        u = _weights4(unaligned, "unaligned")
        if u.shape != a.shape:
            raise ValueError(f"unaligned must have the shape of a, {a.shape}, got {u.shape}")
        subtitle += f", {_correlations(a, u).mean():.2f} in {labels[1]}'s trained order"
    shown = f"{len(index)} of {c} pairs" if len(index) < c else f"all {c} pairs"
    subtitle += f"; {shown}" + (", best-matched first" if order == "similarity" else "")
    ax.set_title(subtitle, fontsize=MIN_FONT_PT + 1)
    if title:
        fig.suptitle(title)
    return fig


def rendered_font_sizes(fig, column_px: int = COLUMN_PX, dpi: int = BOOK_DPI) -> list:
    """[(text, points)] for every visible text of ``fig`` at the size a reader of the book sees it.

    The figure is rendered as the notebooks show it (PNG, ``dpi``, tight bounding box); a PNG wider
    than the text column (``column_px``) is shrunk to it, and every font with it: points = font size
    x min(1, column_px / PNG width in pixels). (This counts a pixel of the PNG as a pixel of the page,
    which errs on the small side by 96 / ``dpi``.)
    """
    import io

    from matplotlib.text import Text

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    width_px = int.from_bytes(buffer.getvalue()[16:20], "big")  # the PNG header's IHDR width
    scale = min(1.0, column_px / width_px)
    return [(t.get_text(), t.get_fontsize() * scale) for t in fig.findobj(Text)
            if t.get_visible() and t.get_text().strip()]
