"""Report figures as PNG: the ratio sweep (HLPT Fig. 2a), loss per epoch (HLPT Fig. 4) and the
IST importance heat map (IST Fig. 4).

Each function takes collected runs, draws only what they contain and returns the paths it
wrote (none when the runs hold nothing for that figure), so ``layerpeft report --out`` can
call all of them on any set of run directories.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402

from layerpeft.report.tables import Run  # noqa: E402
from layerpeft.rundir import IST_FILE  # noqa: E402


def _requested_ratio(run: Run) -> str | None:
    for o in run.overrides:
        if o.startswith("layer_ratio="):
            return o.split("=", 1)[1]
    return None


def _interval(cell) -> tuple[float, float] | None:
    """The cell's 95 % bootstrap interval of its average, when its answers are on disk."""
    from layerpeft.report.stats import interval, load_predictions

    try:
        load_predictions(cell)
    except ValueError:
        return None
    return interval(cell)


def sweep_series(runs: list[Run]) -> tuple[dict[str, list[tuple[float, str, float, tuple | None]]],
                                            list[tuple[str, float, tuple | None]]]:
    """Points of the ratio figure: per method, (share of the layers in the bottom part, ratio
    label, mean average over the seeds, its 95 % interval) ordered by that share; and the
    reference lines, (label, average, interval) of cells whose plan has one segment. The share,
    not the label's rank, places a point, so a sweep with ratios still missing keeps its spacing."""
    from layerpeft.report.stats import group_cells

    series: dict[str, list] = {}
    refs = []
    for cell in group_cells([r for r in runs if r.metrics.get("average") is not None]):
        r = cell.runs[0]
        avg = float(cell.averages().mean())
        if not r.segments:
            continue
        if ":" not in r.segments:
            refs.append((f"{r.metrics.get('method')} (all layers)", avg, _interval(cell)))
            continue
        parts = [int(x) for x in r.segments.split(":")]
        asked = _requested_ratio(r)
        label = r.segments if not asked or asked == r.segments else f"{asked}\n({r.segments})"
        series.setdefault(r.metrics.get("method"), []).append((parts[0] / sum(parts), label, avg, _interval(cell)))
    for points in series.values():
        points.sort(key=lambda p: p[0])
    return series, refs


def ratio_sweep(runs: list[Run], out: Path) -> list[Path]:
    """Average accuracy against the bottom:top ratio, one line per method (HLPT Fig. 2a), each
    point with its 95 % interval (paired bootstrap over questions and seeds), with single-segment
    runs (LoRA on every layer, …) as horizontal reference lines and bands. Drawn only when some
    method ran at two ratios or more: a table of methods at their default ratios (HLPT 23:7
    beside H²LPT 11:15:4) is no sweep."""
    series, refs = sweep_series(runs)
    if not any(len({label for _, label, _, _ in points}) >= 2 for points in series.values()):
        return []
    # Wide, with small tick labels: the paper's 8:24 and 11:21 sit 2/30 of the axis apart on a
    # 30-layer model, and their two-line labels must not run into each other.
    fig, ax = plt.subplots(figsize=(9, 4.2))
    ticks: dict[float, str] = {}
    for method, points in sorted(series.items()):
        for share, label, _, _ in points:
            ticks.setdefault(share, label)
        x, y = [p[0] for p in points], [p[2] for p in points]
        err = [[p[2] - p[3][0] if p[3] else 0 for p in points], [p[3][1] - p[2] if p[3] else 0 for p in points]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=method)
    for i, (label, avg, band) in enumerate(refs):
        color = f"C{len(series) + i}"
        ax.axhline(avg, linestyle="--", color=color, label=label)
        if band:
            ax.axhspan(*band, color=color, alpha=0.12)
    ax.set_xticks(list(ticks), list(ticks.values()), fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("bottom:top layers (requested, and as placed on this model), at the bottom part's share")
    ax.set_ylabel("average accuracy (%), 95 % interval")
    ax.set_title("Accuracy against the bottom:top layer ratio")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out / "ratio_sweep.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def epoch_losses(run: Run) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(epoch, mean training loss) per epoch and (epoch, validation loss) points of a run."""
    train = run.metrics.get("train") or {}
    history = train.get("loss_history") or []
    if not history:
        return [], []
    per_epoch = train.get("steps_per_epoch") or _steps_per_epoch_from_config(run, len(history))
    epochs: dict[int, list[float]] = {}
    for step, loss in history:
        epochs.setdefault(math.ceil(step / per_epoch), []).append(loss)
    mean = [(float(e), sum(v) / len(v)) for e, v in sorted(epochs.items())]
    return mean, [(float(e), float(v)) for e, v in train.get("val_loss_history") or []]


def _steps_per_epoch_from_config(run: Run, steps: int) -> int:
    """Runs from before ``steps_per_epoch`` was recorded: steps / configured epochs."""
    from omegaconf import OmegaConf

    config = run.path / "config.yaml"
    epochs = OmegaConf.load(config).train.epochs if config.is_file() else 1
    return max(1, math.ceil(steps / int(epochs)))


def convergence(runs: list[Run], out: Path) -> list[Path]:
    """Training (solid) and validation (dashed) loss per epoch, one colour per cell; with several
    seeds the line is their mean and a band spans their lowest to highest."""
    from layerpeft.report.stats import group_cells

    curves = []
    for cell in group_cells(runs):
        per_run = [epoch_losses(r) for r in cell.runs]
        per_run = [c for c in per_run if c[0]]
        if per_run:
            curves.append((cell.label, [c[0] for c in per_run], [c[1] for c in per_run if c[1]]))
    if not curves:
        return []
    # past ten runs the default colour cycle repeats: take 20 colours and vary the marker too
    many = len(curves) > 10
    palette, markers = (plt.get_cmap("tab20").colors, "o^Dv") if many else (plt.get_cmap("tab10").colors, "o")
    fig, ax = plt.subplots(figsize=(13 if many else 10, 4.5))
    for i, (label, trains, vals) in enumerate(curves):
        color, marker = palette[i % len(palette)], markers[i % len(markers)]
        for seeds, style in ((trains, "-"), (vals, "--")):
            if not seeds:
                continue
            epochs = sorted({e for curve in seeds for e, _ in curve})
            values = [[dict(curve).get(e) for curve in seeds] for e in epochs]
            mean = [sum(v for v in vs if v is not None) / sum(v is not None for v in vs) for vs in values]
            ax.plot(epochs, mean, marker=marker, linestyle=style, color=color,
                    markerfacecolor=color if style == "-" else "none", label=label if style == "-" else None)
            if len(seeds) > 1:
                ax.fill_between(epochs, [min(v for v in vs if v is not None) for vs in values],
                                [max(v for v in vs if v is not None) for vs in values], color=color, alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (mean per epoch)")
    ax.set_title("Loss per epoch (solid: training, dashed: validation; bands: lowest to highest seed)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    # one entry per cell, beside the axes: with many runs a legend inside hides the curves
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path = out / "convergence.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def ist_heatmaps(runs: list[Run], out: Path) -> list[Path]:
    """For every IST run: importance of each layer (rows) after each probe step (columns)."""
    paths = []
    for r in runs:
        f = r.path / IST_FILE
        if not f.is_file():
            continue
        ist = json.loads(f.read_text())
        trajectory = ist.get("trajectory") or []
        if not trajectory:
            continue
        layers = ist["layers"]
        grid = [[point["importance"][i] for point in trajectory] for i in range(len(layers))]
        steps = [point["step"] for point in trajectory]
        fig, ax = plt.subplots(figsize=(8, max(3.0, 0.18 * len(layers) + 1.5)))
        im = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest")
        every = max(1, len(steps) // 10)
        ax.set_xticks(range(0, len(steps), every), [str(s) for s in steps[::every]])
        every = max(1, len(layers) // 15)
        ax.set_yticks(range(0, len(layers), every), [str(x) for x in layers[::every]])
        ax.set_xlabel("optimizer step (importance update)")
        ax.set_ylabel("layer")
        # the run label (its distinct overrides) can be long: it gets a line of its own
        ax.set_title(f"IST layer importance ({ist.get('policy', 'importance')} policy)\n{r.label}", fontsize=10)
        fig.colorbar(im, ax=ax, label="importance score")
        fig.tight_layout()
        path = out / f"ist_importance_{r.path.name}.png"  # run directory names are unique and safe
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def all_figures(runs: list[Run], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    return ratio_sweep(runs, out) + convergence(runs, out) + ist_heatmaps(runs, out)
