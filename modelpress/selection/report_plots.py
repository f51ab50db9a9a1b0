"""The report's figures (matplotlib, Agg), returned as figures so tests can inspect the layout."""

from __future__ import annotations

import base64
import io
import math

DPI = 110  # the figure is drawn and saved at one DPI, so label placement measured on screen holds in the PNG


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    pyplot().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def pareto_front(points: list[tuple[str, float, float]], higher_is_better: bool = True) -> list[str]:
    """Names on the front: no other point is both at least as fast and at least as good (more
    accurate; or, for an error such as RMSE, `higher_is_better` False, lower)."""
    sign = 1 if higher_is_better else -1
    front = []
    for name, lat, q in points:
        acc = sign * q
        dominated = any((l2 <= lat and sign * a2 >= acc) and (l2 < lat or sign * a2 > acc) for _, l2, a2 in points)
        if not dominated:
            front.append(name)
    return front


def _candidate_offsets(max_radius: float = 120.0):
    """Label-centre offsets (points) tried in order: just upper right, then rings outwards."""
    yield (7.0, 6.0)
    r = 10.0
    while r <= max_radius:
        steps = max(8, int(2 * math.pi * r / 9))  # about one label width apart along the ring
        for k in range(steps):
            a = math.pi / 4 + 2 * math.pi * k / steps  # start upper right, go anticlockwise
            yield (r * math.cos(a), r * math.sin(a))
        r += 8.0


def _overlaps(box, placed, pad: float) -> bool:
    return any(box.x0 - pad < b.x1 and b.x0 - pad < box.x1 and box.y0 - pad < b.y1 and b.y0 - pad < box.y1
               for b in placed)


def place_labels(fig, ax, labels, marker_points: float = 3.5, pad_points: float = 1.5) -> None:
    """Move each annotation to the first offset whose box clears every marker and every label
    placed before it.

    Greedy and deterministic (same input, same picture). Boxes are measured with the figure's
    renderer; offsets are in points, so the layout survives the DPI of the saved PNG.
    """
    from matplotlib.patches import ConnectionPatch
    from matplotlib.transforms import Bbox, offset_copy

    renderer = fig.canvas.get_renderer()
    pad = pad_points * fig.dpi / 72
    half = marker_points * fig.dpi / 72
    placed = [Bbox.from_extents(x - half, y - half, x + half, y + half)  # the markers: labels must not hide them
              for x, y in (ax.transData.transform(a.xy) for a in labels)]
    for ann in labels:
        box = None
        for off in _candidate_offsets():
            ann.xyann = off
            box = ann.get_window_extent(renderer)
            if not _overlaps(box, placed, pad):
                break
        placed.append(box)
        if math.hypot(*ann.xyann) > 12:
            # far from its point: a leader line says whose label it is (a patch, not a text, so
            # the axes' texts stay exactly the labels)
            dx, dy = ann.xyann
            ax.add_artist(ConnectionPatch(ann.xy, ann.xy, coordsA=ax.transData, zorder=2, color="0.6", lw=0.5,
                                          coordsB=offset_copy(ax.transData, fig, x=dx, y=dy, units="points"),
                                          shrinkA=3, shrinkB=4))


def latency_accuracy(points: list[dict], chosen: str | None, accuracy_bar: float | None, *,
                     metric: str = "accuracy", label: str = "test accuracy", higher_is_better: bool = True):
    """Scatter of p50 latency against the quality metric, each point labelled with its key number.

    `points`: {key, name, p50, <metric>, stable, window_range: (lo, hi) or None}; `metric` is the
    score's key (accuracy, rmse), `label` the axis title, `accuracy_bar` the tolerance's bar in
    that metric. Returns (fig, ax, labels); the names go in the key table beside the image, since
    long names at near-identical coordinates cannot all be written on the plot legibly.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=DPI)
    points = [{**p, "accuracy": p[metric]} for p in points]  # one key below, whatever the metric
    front = set(pareto_front([(p["name"], p["p50"], p["accuracy"]) for p in points], higher_is_better))
    unstable_drawn = False
    for p in points:
        is_chosen = p["name"] == chosen
        color = "tab:red" if is_chosen else ("tab:blue" if p["name"] in front else "tab:gray")
        if not p["stable"] and p.get("window_range"):
            lo, hi = p["window_range"]
            ax.errorbar(p["p50"], p["accuracy"], xerr=[[max(0.0, p["p50"] - lo)], [max(0.0, hi - p["p50"])]],
                        fmt="none", ecolor="tab:orange", elinewidth=1, capsize=2, zorder=2)
        # unstable latency: a hollow marker, so it is not read as a settled figure
        ax.scatter(p["p50"], p["accuracy"], s=70 if is_chosen else 35, marker="*" if is_chosen else "o",
                   facecolors=color if p["stable"] else "none", edgecolors=color, zorder=3,
                   label=None if p["stable"] or unstable_drawn else "unstable latency (window range)")
        unstable_drawn |= not p["stable"]
    fp = sorted((p["p50"], p["accuracy"]) for p in points if p["name"] in front)
    if fp:
        ax.step([q[0] for q in fp], [q[1] for q in fp], where="post", color="tab:blue", lw=1, label="Pareto front")
    if accuracy_bar is not None:
        ax.axhline(accuracy_bar, color="tab:red", ls="--", lw=1, label=f"{label.removeprefix('test ')} bar (tolerance)")
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency at batch 1 (ms, log scale)")
    ax.set_ylabel(label if higher_is_better else f"{label} (lower is better)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        # the worse side of the plot is emptier: below for accuracy, above for an error
        ax.legend(fontsize=8, loc="lower right" if higher_is_better else "upper right")
    labels = [ax.annotate(str(p["key"]), (p["p50"], p["accuracy"]), fontsize=7, xytext=(7, 6),
                          textcoords="offset points", ha="center", va="center", zorder=4,
                          annotation_clip=False)
              for p in points]
    fig.canvas.draw()  # fixes the axes limits before the label boxes are measured
    place_labels(fig, ax, labels)
    return fig, ax, labels


def sizes(names: list[str], kilobytes: list[float], chosen: str | None):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1), dpi=DPI)
    ax.barh(names, kilobytes, color=["tab:red" if n == chosen else "tab:blue" for n in names])
    ax.invert_yaxis()
    ax.set_xlabel("size on disk (kB)")
    return fig


def confusion(matrix, class_names: list[str]):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4), dpi=DPI)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, fontsize=7)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            if v:
                ax.text(j, i, v, ha="center", va="center", fontsize=6)
    return fig
