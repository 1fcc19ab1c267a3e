"""Figures people look at instead of reading numbers; every function saves a PNG and returns
the rendered RGB array (for trackers)."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from shared.atomic import write_bytes  # noqa: E402


def image_grid(rows: list[list[np.ndarray]], column_titles: list[str], path: str | Path,
               title: str | None = None) -> np.ndarray:
    """A table of HxWx3 uint8 images, one column title each."""
    n_rows, n_cols = len(rows), len(column_titles)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.2 * n_cols, 2.2 * n_rows + 0.4), squeeze=False)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            ax = axes[r][c]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(column_titles[c], fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | Path) -> np.ndarray:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    png = io.BytesIO()
    fig.savefig(png, dpi=100, format="png")
    plt.close(fig)
    write_bytes(path, png.getvalue())
    return rgb


def confusion_matrix_figure(matrix, class_names: list[str], path: str | Path, title: str = "") -> np.ndarray:
    """Row-normalised confusion matrix (recall on the diagonal), with the counts in each cell."""
    counts = np.asarray(matrix, dtype=float)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 * n + 2.5, 1.0 * n + 2))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{rates[i, j]:.2f}\n({int(counts[i, j])})", ha="center", va="center", fontsize=8,
                    color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def bar_chart(values: dict[str, float], path: str | Path, title: str = "", ylabel: str = "",
              xlabel: str = "") -> np.ndarray:
    """One bar per name (NaN drawn as a hatched empty bar, never as zero)."""
    names, heights = list(values), [values[n] for n in values]
    fig, ax = plt.subplots(figsize=(1.0 * len(names) + 2, 3.6))
    finite = [0.0 if np.isnan(h) else h for h in heights]
    bars = ax.bar(names, finite, color=["#9ecae1" if np.isnan(h) else "#3182bd" for h in heights])
    for bar, h in zip(bars, heights):
        label = "NaN" if np.isnan(h) else f"{h:.3f}"
        if np.isnan(h):
            bar.set_hatch("//")
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return _save(fig, path)


def scatter_grid(pred: np.ndarray, true: np.ndarray, names: list[str], path: str | Path, title: str = "") -> np.ndarray:
    """Predicted against true, one panel per output column, with the identity line."""
    n = len(names)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.0 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        ax.scatter(true[:, i], pred[:, i], s=6, alpha=0.5)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(names[i], fontsize=9)
        ax.set_xlabel("true", fontsize=8)
        ax.set_ylabel("predicted", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def learning_curves(rows: list[dict], keys: list[str], path: str | Path, title: str = "",
                    ylabel: str = "") -> np.ndarray:
    """Logged metrics against the optimizer step, one line per key present in the rows (each
    row's value is the mean over the steps since the previous row)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key in keys:
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            ax.plot(*zip(*points), label=key, marker="." if len(points) < 30 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel or ", ".join(keys))
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def loss_and_score(train: list[dict], validation: list[dict], chosen: int, path: str | Path, *,
                   steps_per_epoch: float, loss: str, score: str, title: str = "") -> np.ndarray:
    """Training loss (rows with "step" and "loss", each the mean since the previous row) and
    the validation score (rows with "epoch" and "score") against the epoch, on two y axes, with
    the `chosen` epoch marked."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.plot([r["step"] / steps_per_epoch for r in train], [r["loss"] for r in train], color="#3182bd",
            label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel(loss, color="#3182bd")
    right = ax.twinx()
    epochs, scores = [r["epoch"] for r in validation], [r["score"] for r in validation]
    right.plot(epochs, scores, color="#e6550d", marker="o", markersize=3, label="validation")
    right.set_ylabel(score, color="#e6550d")
    picked = [s for e, s in zip(epochs, scores) if e == chosen]
    ax.axvline(chosen, color="grey", ls="--", lw=0.8)
    if picked:
        right.annotate(f"chosen: epoch {chosen}, {picked[0]:.3f}", (chosen, picked[0]), textcoords="offset points",
                       xytext=(-6, -14), ha="right", fontsize=8)
    lines = ax.get_lines()[:1] + right.get_lines()[:1]
    ax.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="center right")
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)
