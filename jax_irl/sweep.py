"""The sweep-and-report kit every paper experiment uses: variants x seeds, a folder per run, finished runs
reused on resume, mean +- standard error summaries, markdown tables and plots from column specs.

    per_run = sweep.run_sweep(run_dir, {"mle": Method(...), "iqlearn:0.1": Method(...)}, seeds=(0, 1, 2),
                              run_one=lambda name, variant, seed, folder: {"0.5": {"accuracy": ...}},
                              fingerprint={"task": ..., "stage": ...})
    summary = sweep.summarise(per_run)                         # variant -> ... -> metric -> [mean, s.e.]
    table = sweep.markdown_table(summary, COLUMNS, num_seeds=3, group_label="temperature")
    sweep.write_results(run_dir, summary, per_run, table)
    sweep.plot_scatter(summary, x=COLUMNS[1], y=COLUMNS[0], path=...)
    # or all of the above at once: sweep.report(run_dir, per_run, COLUMNS, group_label=..., scatter=...)

It lives in the package (not in experiments/, which is not installed) so that a user's own experiment, in
their own repository, gets the same resumable sweep and the same tables.

A run's result is a nested dict of floats (e.g. temperature -> metric -> value). It is saved in the run's
folder (``result.json``) together with the run's fingerprint (the variant, the seed and whatever else decides
the run); a resumed sweep reuses a finished run only when the fingerprint is the same, and refuses (naming the
differences) when it is not, so a result is never silently reused under another config.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

from jax_irl import metrics
from jax_irl.checkpoint import jsonable

RESULT_FILE = "result.json"


class StaleResultError(ValueError):
    """A finished run in the run folder was made under another config than the one now asked for."""


def run_folder(run_dir: str, name: str, seed: int) -> str:
    """The folder of one (variant, seed) run: run_dir/runs/<name>-seed<seed> (':' and '/' replaced by '_')."""
    safe = name.replace(":", "_").replace("/", "_")
    return os.path.join(run_dir, "runs", f"{safe}-seed{seed}")


def _as_json(value) -> Any:
    """value as JSON would give it back (dataclasses as dicts of their fields, tuples as lists)."""
    return json.loads(json.dumps(value, default=jsonable))


def _differences(saved, current, prefix: str = "") -> list:
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) | set(current)):
            out += _differences(saved.get(key, "<missing>"), current.get(key, "<missing>"), f"{prefix}{key}.")
        return out
    return [] if saved == current else [f"{prefix.rstrip('.')}: finished run has {saved!r}, now {current!r}"]


def finished_result(folder: str, fingerprint: Dict[str, Any]) -> Optional[dict]:
    """The saved result of a finished run with this fingerprint, None if the run has not finished; raises
    StaleResultError for a finished run under another fingerprint and ValueError for a damaged file."""
    path = os.path.join(folder, RESULT_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            saved = json.load(f)
        saved_fingerprint, result = saved["fingerprint"], saved["result"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is damaged ({err}); delete it to run that (variant, seed) again") from None
    problems = _differences(saved_fingerprint, _as_json(fingerprint))
    if problems:
        raise StaleResultError(f"{path} was made under another config; use another run folder or variant name, "
                               f"or delete that folder to run it again:\n  " + "\n  ".join(problems))
    return result


def save_result(folder: str, fingerprint: Dict[str, Any], result: dict) -> None:
    """Write the run's result with its fingerprint, atomically (a kill mid-write leaves no finished run)."""
    if jax.process_index() != 0:
        return
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, RESULT_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump({"fingerprint": _as_json(fingerprint), "result": result}, f, indent=2)
    os.replace(path + ".tmp", path)


def check_selection(selected: Sequence[str], variants: Mapping[str, Any], field: str = "methods") -> None:
    """The names a config selects to run must name its variants (and at least one)."""
    missing = [m for m in selected if m not in variants]
    if missing or not selected:
        raise ValueError(f"{field} must name variants; unknown: {missing}; variants: {sorted(variants)}")


def merge_families(**families: Mapping[str, Any]) -> Dict[str, Any]:
    """One name -> variant mapping from a config's families of variants (its fields by keyword, such as
    variants=..., group_arms=...), which a selection (``methods``) names alike; a name in two families is
    refused, naming both fields."""
    merged: Dict[str, Any] = {}
    owner: Dict[str, str] = {}
    for field, variants in families.items():
        shared = sorted(set(variants) & set(merged))
        if shared:
            raise ValueError(f"{owner[shared[0]]} and {field} must not share names; both have {shared}")
        merged.update(variants)
        owner.update({name: field for name in variants})
    return merged


def run_sweep(run_dir: str, variants: Mapping[str, Any], seeds: Sequence[int],
              run_one: Callable[[str, Any, int, str], dict], *,
              fingerprint: Optional[Dict[str, Any]] = None) -> Dict[str, Dict[int, dict]]:
    """run_one(name, variant, seed, folder) -> result for every variant and seed, in that order, reusing the
    finished ones. Each run's fingerprint is ``fingerprint`` (what every run shares and depends on) plus its
    variant (as a dict) and seed. Returns variant name -> seed -> result."""
    if not variants:
        raise ValueError("a sweep needs at least one variant")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be non-empty and distinct; got {tuple(seeds)}")
    per_run: Dict[str, Dict[int, dict]] = {}
    for name, variant in variants.items():
        per_run[name] = {}
        for seed in seeds:
            folder = run_folder(run_dir, name, seed)
            fp = dict(fingerprint or {}, variant=_as_json(variant), variant_name=name, seed=seed)
            result = finished_result(folder, fp)
            if result is None:
                result = _as_json(run_one(name, variant, seed, folder))
                save_result(folder, fp, result)
            per_run[name][seed] = result
    return per_run


# --- summaries ----------------------------------------------------------------------------------------------


def mean_se(values: Sequence[float]) -> list:
    """[mean, standard error] of the finite values (NaN left out); [NaN, NaN] when none is finite."""
    finite = [float(v) for v in values if not math.isnan(float(v))]
    return [float(np.mean(finite)), metrics.standard_error(finite)] if finite else [math.nan, math.nan]


def _summarise_tree(trees: list):
    first = trees[0]
    if isinstance(first, dict):
        return {k: _summarise_tree([t[k] for t in trees if k in t]) for k in first}
    return mean_se(trees)


def summarise(per_run: Dict[str, Dict[int, dict]]) -> Dict[str, dict]:
    """variant -> (the results' nested keys) -> [mean, standard error] over seeds. NaN seeds are left out of a
    leaf; a leaf with one finite seed has a NaN standard error, and one with none is [NaN, NaN]."""
    return {name: _summarise_tree(list(seeds.values())) for name, seeds in per_run.items()}


def frontier_at(points: Sequence[Tuple[float, float]], at: float, origin: Tuple[float, float]) -> float:
    """The y of the frontier through ``origin`` and ``points`` (x, y) at x = ``at``: points sorted by x, joined
    by straight lines; NaN beyond the largest x (no extrapolation) or before the origin's. Used to read a
    method's gold reward at a matched KL from its runs at several KL strengths (origin: the reference policy at
    KL 0), so methods that spend different KLs are compared at the same one."""
    pts = sorted([tuple(map(float, origin))] + [tuple(map(float, p)) for p in points])
    xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    if not np.isfinite(xs).all() or not np.isfinite(ys).all():
        return math.nan
    if at < xs[0] or at > xs[-1]:
        return math.nan
    return float(np.interp(at, xs, ys))


@dataclasses.dataclass(frozen=True)
class Column:
    """A table column or plot axis: the metric's key in the results, its header, its digits."""

    key: str
    header: str
    digits: int = 3


def cell(mean: float, se: float, digits: int) -> str:
    """'0.500 ± 0.012', or '0.500' where the standard error is undefined (one seed)."""
    return f"{mean:.{digits}f}" if math.isnan(se) else f"{mean:.{digits}f} ± {se:.{digits}f}"


def markdown_table(summary: Dict[str, dict], columns: Sequence[Column], *, num_seeds: int,
                   variant_label: str = "method", group_label: Optional[str] = None, note: str = "") -> str:
    """One row per variant (and per group, e.g. temperature, when ``group_label`` is given: summary is then
    variant -> group -> metric -> [mean, se]), one column per ``Column``; then a line on the seeds and ``note``."""
    labels = [variant_label] + ([group_label] if group_label else [])
    lines = ["| " + " | ".join(labels + [c.header for c in columns]) + " |",
             "|" + "---|" * (len(labels) + len(columns))]
    for name, tree in summary.items():
        groups = tree.items() if group_label else [(None, tree)]
        for group, vals in groups:
            cells = [cell(*vals[c.key], c.digits) for c in columns]
            lines.append("| " + " | ".join([name] + ([group] if group_label else []) + cells) + " |")
    spread = (f"Mean ± standard error over {num_seeds} seeds." if num_seeds > 1
              else "One seed, so no standard errors.")
    return "\n".join(lines) + f"\n\n{spread}" + (f" {note}" if note else "") + "\n"


def write_results(run_dir: str, summary: Dict[str, dict], per_run: Dict[str, Dict[int, dict]], table: str,
                  **extra) -> None:
    """results.json (summary, per-run results by seed, and any extra JSON fields) and results.md."""
    if jax.process_index() != 0:
        return
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump(dict({"summary": summary, "per_run": {m: {str(s): r for s, r in v.items()}
                                                        for m, v in per_run.items()}}, **extra), f, indent=2)
    with open(os.path.join(run_dir, "results.md"), "w") as f:
        f.write(table)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _err(se: float):
    return None if math.isnan(se) else se


def plot_scatter(summary: Dict[str, dict], *, x: Column, y: Column, path: str,
                 group_title: Callable[[str], str] = lambda g: f"temperature {g}") -> None:
    """One panel per group (summary: variant -> group -> metric -> [mean, se]), one point per variant at
    (x, y) with standard-error bars (left out where undefined)."""
    if jax.process_index() != 0:
        return
    plt = _pyplot()
    groups = list(next(iter(summary.values())).keys())
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    for ax, g in zip(axes[0], groups):
        for name, tree in summary.items():
            (xm, xe), (ym, ye) = tree[g][x.key], tree[g][y.key]
            ax.errorbar(xm, ym, xerr=_err(xe), yerr=_err(ye), fmt="o", capsize=3, label=name)
        ax.set_xlabel(x.header)
        ax.set_ylabel(y.header)
        ax.set_title(group_title(g))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_over_groups(summary: Dict[str, dict], *, ys: Sequence[Column], path: str, x_label: str) -> None:
    """One panel per column in ``ys``, one line per variant over the groups read as numbers (temperatures,
    KL budgets, rounds), with standard-error bands."""
    if jax.process_index() != 0:
        return
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(ys), figsize=(5 * len(ys), 4), squeeze=False)
    for ax, col in zip(axes[0], ys):
        for name, tree in summary.items():
            xs = sorted(tree, key=float)
            mean = np.array([tree[g][col.key][0] for g in xs])
            se = np.nan_to_num(np.array([tree[g][col.key][1] for g in xs]))
            pos = [float(g) for g in xs]
            ax.plot(pos, mean, marker="o", label=name)
            ax.fill_between(pos, mean - se, mean + se, alpha=0.2)
        ax.set_xlabel(x_label)
        ax.set_ylabel(col.header)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_frontier(summary: Dict[str, dict], *, x: Column, y: Column, path: str, series: Callable[[str], str],
                  title: str = "", reference: Optional[tuple] = None, x_line: Optional[tuple] = None) -> None:
    """One line per series (``series(variant name)``, e.g. the method of 'online@0.1'), through its variants'
    (x, y) means sorted by x, with standard-error bars both ways: a frontier such as gold reward against KL.
    summary: variant -> metric -> [mean, se]. reference: an optional (x, y, label) point, such as the starting
    policy at KL 0. x_line: an optional (x, label) vertical line, such as the expert data's own diversity."""
    if jax.process_index() != 0:
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if x_line is not None:
        ax.axvline(x_line[0], color="gray", linestyle="--", label=x_line[1])
    if reference is not None:
        ax.plot([reference[0]], [reference[1]], marker="*", markersize=12, color="black", linestyle="none",
                label=reference[2])
    groups: Dict[str, list] = {}
    for name, tree in summary.items():
        groups.setdefault(series(name), []).append((tree[x.key], tree[y.key]))
    for label, points in groups.items():
        points.sort(key=lambda p: p[0][0])
        ax.errorbar([p[0][0] for p in points], [p[1][0] for p in points],
                    xerr=[np.nan_to_num(p[0][1]) for p in points], yerr=[np.nan_to_num(p[1][1]) for p in points],
                    marker="o", capsize=3, label=label)
    ax.set_xlabel(x.header)
    ax.set_ylabel(y.header)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(run_dir: str, per_run: Dict[str, Dict[int, dict]], columns: Sequence[Column], *,
           group_label: Optional[str] = None, note: str = "", scatter: Optional[tuple] = None,
           over_groups: Optional[tuple] = None, variant_label: str = "method", appendix: str = "",
           **extra) -> Dict[str, dict]:
    """Summarise, write results.json (with any ``extra`` JSON fields) and results.md (the table, then
    ``appendix``: more markdown, such as a second table), draw the plots, print the markdown; returns the summary.

    scatter: (x Column, y Column, file name) for ``plot_scatter``; over_groups: (Columns, x label, file name)
    for ``plot_over_groups`` (both need groups)."""
    summary = summarise(per_run)
    num_seeds = max(len(seeds) for seeds in per_run.values())
    table = markdown_table(summary, columns, num_seeds=num_seeds, variant_label=variant_label,
                           group_label=group_label, note=note)
    if appendix:
        table = f"{table}\n\n{appendix}"
    write_results(run_dir, summary, per_run, table, **extra)
    if scatter:
        plot_scatter(summary, x=scatter[0], y=scatter[1], path=os.path.join(run_dir, scatter[2]))
    if over_groups:
        plot_over_groups(summary, ys=over_groups[0], x_label=over_groups[1], path=os.path.join(run_dir, over_groups[2]))
    if jax.process_index() == 0:
        print(table)
    return summary
