"""The report's plots: matplotlib figures of loaded trials, as deterministic PNG bytes.

    images["loss_curves.png"] = plot_loss_curves(trials)

Called by harness.report_sections.plots_section; matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

import io
import math

from harness.report import Sweep, Trial, rank_trials
from harness.report_format import PairedRegressionDelta, fmt_value

# Deterministic PNGs: matplotlib's defaults (not the user's matplotlibrc), the bundled DejaVu fonts, and no
# "Software" metadata, so the same artifacts give the same bytes. Figures are made without pyplot (no global
# backend or figure registry is touched).
_RC = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "svg.hashsalt": "harness-report",
    "figure.dpi": 100,
    "savefig.dpi": 100,
}


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False)
    return figure, [ax for row in axes for ax in row]


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _plotting(draw):
    """Run `draw` under fixed rcParams; returns its PNG bytes."""
    import matplotlib

    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        matplotlib.rcParams.update(_RC)
        return _png(draw())


def _colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _reference_lines(ax, ranked: list[Trial]) -> None:
    """min_score, base zero-shot and prompt baseline as horizontal lines: the bars an adapter has to clear."""
    if not ranked:
        return
    results = ranked[0].results
    baselines = results.baselines
    lines = [(results.eval_set.min_score, "min_score", "#cf222e", "--")]
    if baselines.zero_shot:
        lines.append((baselines.zero_shot.score, "base zero-shot", "#57606a", ":"))
    if baselines.prompt_baseline:
        lines.append((baselines.prompt_baseline.score, "prompt baseline", "#8250df", "-."))
    for value, label, color, style in lines:
        ax.axhline(value, color=color, linestyle=style, linewidth=1.1, label=f"{label} {value:.2f}", zorder=1)


def plot_objective_vs_params(trials: list[Trial], params: list[str], sweeps: list[Sweep]) -> bytes:
    ranked = rank_trials(trials)
    sweep_index = {s.name: i for i, s in enumerate(sweeps)}
    colors = _colors(len(sweeps))
    space = {}
    for sweep in sweeps:
        for name, choices in sweep.meta.space.items():
            space.setdefault(name, choices)

    def draw():
        ncols = min(len(params), 3)
        nrows = math.ceil(len(params) / ncols)
        figure, axes = _figure(4.4 * ncols + 1.6, 3.3 * nrows, nrows, ncols)
        for ax in axes[len(params) :]:
            ax.set_visible(False)
        for ax, param in zip(axes, params, strict=False):  # spare axes are hidden
            points = []  # (value, score, trial, hollow)
            for trial in trials:
                value = trial.record.params.get(param)
                if value is None:
                    continue
                if trial.results:
                    points.append((value, trial.heldout.score, trial, False))
                elif trial.record.state == "PRUNED" and trial.record.intermediate:
                    points.append((value, trial.record.intermediate[-1].score, trial, True))
            values = [p[0] for p in points]
            choices = space.get(param) if isinstance(space.get(param), list) else None
            numeric = values and all(_is_number(v) for v in values)
            categorical = not numeric or choices is None or all(v in choices for v in values)
            if categorical:
                order = sorted(
                    {*values, *(choices or [])},
                    key=lambda v: (not _is_number(v), v if _is_number(v) else str(v)),
                )
                position = {fmt_value(v): i for i, v in enumerate(order)}
                xs = [position[fmt_value(v)] for v in values]
                ax.set_xticks(range(len(order)), [fmt_value(v) for v in order])
                ax.set_xlim(-0.5, len(order) - 0.5)
            else:
                xs = [float(v) for v in values]
                if min(xs) > 0 and max(xs) / min(xs) >= 20:
                    ax.set_xscale("log")
            for x, (_, score, trial, hollow) in zip(xs, points, strict=True):
                color = colors[sweep_index[trial.sweep]]
                ax.scatter(
                    [x],
                    [score],
                    s=42,
                    zorder=3,
                    marker="o",
                    linewidths=1.4,
                    facecolors="none" if hollow else [color],
                    edgecolors=[color],
                )
            _label_points(
                ax, [(x, score, trial.label) for x, (_, score, trial, _) in zip(xs, points, strict=True)]
            )
            _reference_lines(ax, ranked)
            ax.set_xlabel(param)
            ax.set_ylabel("held-out score")
            ax.set_ylim(-0.05, 1.05)
        _sweep_legend(
            figure,
            axes[0],
            sweeps,
            colors,
            pruned=any(t.record.state == "PRUNED" and t.record.intermediate for t in trials),
        )
        figure.suptitle("Objective (held-out score) vs each swept parameter")
        return figure

    return _plotting(draw)


def _label_points(ax, points: list[tuple[float, float, str]]) -> None:
    """One label per position, listing every trial there (trials with equal scores would overprint)."""
    labels: dict[tuple[float, float], list[str]] = {}
    for x, y, label in points:
        labels.setdefault((x, y), []).append(label)
    for (x, y), names in labels.items():
        ax.annotate(", ".join(names), (x, y), xytext=(5, 3), textcoords="offset points", fontsize=7)


def _sweep_legend(figure, ax, sweeps: list[Sweep], colors: list, pruned: bool) -> None:
    from matplotlib.lines import Line2D

    handles, _ = ax.get_legend_handles_labels()  # the reference lines
    handles += [
        Line2D([], [], marker="o", linestyle="", color=colors[i], label=f"{s.name}: complete")
        for i, s in enumerate(sweeps)
    ]
    if pruned:
        handles.append(
            Line2D(
                [],
                [],
                marker="o",
                linestyle="",
                markerfacecolor="none",
                color="gray",
                label="pruned (last intermediate)",
            )
        )
    figure.legend(handles=handles, fontsize=7, loc="outside right center")


def _pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (both maximised)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            qx >= x and qy >= y and (qx > x or qy > y) for j, (qx, qy) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return front


def plot_score_vs_regression(ranked: list[Trial], sweep_names: list[str]) -> bytes:
    colors = _colors(len(sweep_names))
    points = [(-t.results.final.worst_regression, t.heldout.score) for t in ranked]
    front = _pareto_front(points)

    def draw():
        figure, (ax,) = _figure(8.5, 4.6)
        for (x, y), trial in zip(points, ranked, strict=True):
            held = trial.heldout
            color = colors[sweep_names.index(trial.sweep)]
            ax.errorbar(
                [x],
                [y],
                yerr=[[y - held.ci_low], [held.ci_high - y]],
                fmt="none",
                ecolor=color,
                alpha=0.5,
                capsize=3,
                zorder=2,
            )
            if trial.feasible_final:
                ax.scatter([x], [y], s=46, color=[color], zorder=3)
            else:
                ax.scatter([x], [y], s=60, marker="x", color="#cf222e", zorder=3)
        _label_points(ax, [(x, y, t.label) for (x, y), t in zip(points, ranked, strict=True)])
        front_points = sorted(points[i] for i in front)
        ax.plot(
            [p[0] for p in front_points],
            [p[1] for p in front_points],
            color="black",
            linewidth=1.2,
            linestyle="--",
            marker="o",
            markersize=11,
            markerfacecolor="none",
            zorder=1,
            label="Pareto front",
        )
        ax.axvline(0.0, color="gray", linewidth=0.8, linestyle=":")
        _reference_lines(ax, ranked)
        xs = [p[0] for p in points]
        span = max(max(xs) - min(xs), 0.02)
        ax.set_xlim(min(xs) - 0.25 * span, max(xs) + 0.25 * span)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("worst regression delta (adapter - base; higher is better)")
        ax.set_ylabel("held-out score (95% CI)")
        scored = any(t.results.final.regression_delta for t in ranked)
        ax.set_title("Held-out score vs forgetting" + ("" if scored else " (no regression benchmark scored)"))
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
        return figure

    return _plotting(draw)


def plot_loss_curves(trials: list[Trial]) -> bytes:
    from matplotlib.ticker import MaxNLocator

    stages = list(dict.fromkeys(point.stage for t in trials for point in t.loss))
    colors = _colors(len(trials))

    def draw():
        figure, axes = _figure(6.2 * len(stages), 3.8, 1, len(stages))
        for ax, stage in zip(axes, stages, strict=True):
            for color, trial in zip(colors, trials, strict=True):
                points = [p for p in trial.loss if p.stage == stage and p.loss is not None]
                if not points:
                    continue
                style = "-" if trial.record.state == "COMPLETE" else "--"
                ax.plot(
                    [p.step for p in points],
                    [p.loss for p in points],
                    style,
                    color=color,
                    linewidth=1.3,
                    marker="." if len(points) < 30 else None,
                    label=f"{trial.label} ({trial.record.state.lower()})",
                )
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("step")
            ax.set_ylabel("training loss")
            ax.set_title(f"{stage.upper()} loss")
            if len(trials) <= 12:
                ax.legend(fontsize=7, loc="best")
        return figure

    return _plotting(draw)


def plot_regression_deltas(
    deltas: dict[str, dict[str, PairedRegressionDelta | None]], tasks: list[str], limits: dict[str, float]
) -> bytes:
    labels = list(deltas)
    colors = _colors(len(labels))

    def draw():
        figure, (ax,) = _figure(max(6.0, 1.8 * len(tasks) + 3), 4.0)
        width = 0.8 / len(labels)
        for i, (label, color) in enumerate(zip(labels, colors, strict=True)):
            xs, ys, errs = [], [], []
            for j, task in enumerate(tasks):
                delta = deltas[label][task]
                if delta is None:
                    continue
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(delta.delta)
                errs.append(0.0 if math.isnan(delta.half_width) else delta.half_width)
            ax.bar(xs, ys, width=width * 0.92, color=color, yerr=errs, capsize=3, label=f"trial {label}")
        for j, task in enumerate(tasks):
            if task in limits:
                ax.hlines(-limits[task], j - 0.45, j + 0.45, colors="#cf222e", linestyles="--", linewidth=1.2)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(tasks)), tasks)
        ax.set_ylabel("score delta vs base (95% CI)")
        ax.set_title("Regression benchmarks: change vs base model (dashed: limit)")
        ax.legend(fontsize=8, loc="best")
        return figure

    return _plotting(draw)


def plot_parallel_coordinates(trials: list[Trial], space: dict[str, list], log_params: set[str]) -> bytes:
    """One line per trial across an axis per swept parameter and the held-out score, coloured by that score.

    Categorical parameters sit at evenly spaced positions in their listed order; `log_params` ([low, high],
    sampled log-uniform) on a log scale between low and high. Completed trials are solid, pruned ones dashed at
    their last intermediate score.
    """
    params = list(space)
    lines = []  # (positions in [0, 1] per axis, score, pruned)
    for trial in trials:
        if trial.results:
            score, pruned = trial.heldout.score, False
        elif trial.record.state == "PRUNED" and trial.record.intermediate:
            score, pruned = trial.record.intermediate[-1].score, True
        else:
            continue
        if not all(p in trial.record.params for p in params):
            continue
        positions = [_axis_position(trial.record.params[p], space[p], p in log_params) for p in params]
        lines.append((positions + [score], score, pruned))

    def draw():
        import matplotlib

        figure, (ax,) = _figure(1.7 * (len(params) + 1) + 2.0, 4.2)
        cmap = matplotlib.colormaps["viridis"]
        for ys, score, pruned in sorted(lines, key=lambda line: line[1]):  # the best drawn last, on top
            ax.plot(range(len(ys)), ys, "--" if pruned else "-", color=cmap(score), linewidth=1.6 if not pruned
                    else 1.0, alpha=0.9, marker="o", markersize=3)
        for x, param in enumerate(params):
            ax.axvline(x, color="#57606a", linewidth=0.8)
            choices = space[param]
            if param in log_params:
                low, high = choices
                ticks = [(0.0, fmt_value(low)), (1.0, fmt_value(high))]
            else:
                ticks = [(_axis_position(c, choices, False), fmt_value(c)) for c in choices]
            for y, text in ticks:
                ax.annotate(_plain(text), (x, y), xytext=(3, 0), textcoords="offset points", fontsize=7,
                            va="center", zorder=4, bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.75,
                                                         "pad": 0.5})
        score_axis = len(params)
        ax.axvline(score_axis, color="#57606a", linewidth=0.8)
        for y in (0.0, 0.5, 1.0):
            ax.annotate(f"{y:.1f}", (score_axis, y), xytext=(3, 0), textcoords="offset points", fontsize=7,
                        va="center")
        ax.set_xticks(range(len(params) + 1), [_plain(p) for p in params] + ["held-out score"], rotation=15)
        ax.set_yticks([])
        ax.set_ylim(-0.08, 1.08)
        ax.set_xlim(-0.2, len(params) + 0.5)
        ax.grid(False)
        mappable = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, 1), cmap=cmap)
        figure.colorbar(mappable, ax=ax, label="held-out score", fraction=0.03)
        ax.set_title("Each trial's settings and score (solid: complete; dashed: pruned, at its last intermediate)")
        return figure

    return _plotting(draw)


def _axis_position(value, choices: list, log: bool) -> float:
    """Where `value` sits on its parameter's axis, 0 to 1."""
    if log:
        low, high = choices
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    index = next((i for i, c in enumerate(choices) if c == value), 0)
    return index / (len(choices) - 1) if len(choices) > 1 else 0.5


def _plain(text: str) -> str:
    """Text matplotlib draws as it is: a `$` would start mathtext (a sweep's choices are user text)."""
    return str(text).replace("$", r"\$")
