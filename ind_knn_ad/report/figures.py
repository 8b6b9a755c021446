"""The report's plots as inline SVG (matplotlib, no pyplot, no display): score histograms
against the threshold, ROC, precision-recall and PRO curves, the colour bar.

Text stays text (`svg.fonttype: none`), drawn by the browser's own fonts: small pages, no
font files. Imported only when a report is written.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import matplotlib as mpl
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from ind_knn_ad.report.pictures import ramp

GOOD_COLOUR = "#6b7280"
DEFECT_COLOURS = ("#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
THRESHOLD_COLOUR = "#111111"
BEST_COLOUR = "#2ca02c"
_STYLE = {"svg.fonttype": "none", "svg.hashsalt": "ind_knn_ad", "font.size": 10}


def svg(figure: Figure) -> str:
    """The figure as an <svg> element, without the XML prologue, to put inside HTML."""
    buffer = io.StringIO()
    with mpl.rc_context(_STYLE):
        figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def histogram(
    groups: dict[str, np.ndarray],
    threshold: float,
    best: float | None,
    label: str,
    neutral: str = "good",
) -> str:
    """The `neutral` group's scores (grey, filled) and each other group's, on shared bins
    of the model's own scale, with the threshold and (when given) the best-F1 cut as
    vertical lines."""
    values = np.concatenate([v for v in groups.values() if v.size] + [[threshold]])
    edges = np.histogram_bin_edges(values, bins=min(40, max(10, values.size // 3)))
    with mpl.rc_context(_STYLE):
        figure = Figure(figsize=(8.5, 3.0))
        axes = figure.add_subplot()
        colours = iter(DEFECT_COLOURS * 4)
        for name, scores in groups.items():
            good = name == neutral
            axes.hist(
                scores,
                bins=edges,
                histtype="stepfilled" if good else "step",
                color=GOOD_COLOUR if good else next(colours),
                alpha=0.45 if good else 1.0,
                linewidth=1.8,
                label=f"{name} ({scores.size})",
            )
        axes.axvline(
            threshold, color=THRESHOLD_COLOUR, linewidth=2, label=f"threshold {threshold:.4g}"
        )
        if best is not None and np.isfinite(best):
            axes.axvline(best, color=BEST_COLOUR, linestyle="--", label=f"best F1 at {best:.4g}")
        axes.set_xlabel(label)
        axes.set_ylabel("images")
        axes.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        axes.spines[["top", "right"]].set_visible(False)
        return svg(figure)


@dataclass
class Curve:
    """One panel of `curves`: its title, axis labels and points."""

    title: str
    xlabel: str
    ylabel: str
    x: np.ndarray
    y: np.ndarray


def curves(panels: list[Curve]) -> str:
    """Curves side by side, on axes from 0 to 1 in y (ROC, precision-recall, PRO)."""
    with mpl.rc_context(_STYLE):
        figure = Figure(figsize=(3.0 * len(panels), 3.0), layout="constrained")
        for index, panel in enumerate(panels, start=1):
            axes = figure.add_subplot(1, len(panels), index)
            axes.plot(panel.x, panel.y)
            axes.set_title(panel.title, fontsize=10)
            axes.set_xlabel(panel.xlabel)
            axes.set_ylabel(panel.ylabel)
            axes.set_ylim(0, 1.02)
            axes.grid(alpha=0.3)
        return svg(figure)


def colour_bar(span: tuple[float, float], threshold: float | None, label: str) -> str:
    """The maps' colour scale from span[0] to span[1], the threshold marked on it."""
    with mpl.rc_context(_STYLE):
        figure = Figure(figsize=(6.0, 0.9))
        axes = figure.add_axes((0.05, 0.55, 0.9, 0.3))
        axes.imshow(ramp()[None], aspect="auto", extent=(*span, 0, 1), cmap=ListedColormap(ramp()))
        axes.set_yticks([])
        axes.set_xlabel(label, fontsize=9)
        if threshold is not None:
            axes.axvline(threshold, color="white", linewidth=3)
            axes.axvline(threshold, color="black", linewidth=1.2)
            axes.annotate(
                f"threshold {threshold:.4g}",
                (threshold, 1),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                fontsize=9,
                annotation_clip=False,
            )
        return svg(figure)
