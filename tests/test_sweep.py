"""The sweep-and-report kit: runs reused on resume (and never under another config), summaries, tables, plots."""

import dataclasses
import json
import math
import os

import numpy as np
import pytest

from jax_irl import stages, sweep


@dataclasses.dataclass(frozen=True)
class Variant:
    lr: float = 0.1


def _run_one(calls):
    def run_one(name, variant, seed, folder):
        calls.append((name, seed))
        return {"1": {"score": variant.lr * 10 + seed, "other": float("nan") if seed == 0 else 1.0}}

    return run_one


def test_runs_once_reuses_finished_runs_and_grows(tmp_path):
    calls = []
    variants = {"a": Variant(0.1), "b:0.2": Variant(0.2)}
    first = sweep.run_sweep(str(tmp_path), variants, (0, 1), _run_one(calls), fingerprint={"data": 1})
    assert calls == [("a", 0), ("a", 1), ("b:0.2", 0), ("b:0.2", 1)]
    assert first["b:0.2"][1]["1"]["score"] == pytest.approx(3.0)
    assert os.path.exists(tmp_path / "runs" / "b_0.2-seed1" / "result.json")
    again = sweep.run_sweep(str(tmp_path), variants, (0, 1, 2), _run_one(calls), fingerprint={"data": 1})
    assert calls[4:] == [("a", 2), ("b:0.2", 2)]  # only the new seed ran
    assert again["a"][0] == first["a"][0] and set(again["a"]) == {0, 1, 2}


def test_a_finished_run_is_never_reused_under_another_config(tmp_path):
    calls = []
    sweep.run_sweep(str(tmp_path), {"a": Variant(0.1)}, (0,), _run_one(calls), fingerprint={"data": 1})
    with pytest.raises(sweep.StaleResultError, match=r"variant.lr: finished run has 0.1, now 0.3"):
        sweep.run_sweep(str(tmp_path), {"a": Variant(0.3)}, (0,), _run_one(calls), fingerprint={"data": 1})
    with pytest.raises(sweep.StaleResultError, match=r"data: finished run has 1, now 2"):
        sweep.run_sweep(str(tmp_path), {"a": Variant(0.1)}, (0,), _run_one(calls), fingerprint={"data": 2})
    assert calls == [("a", 0)]
    path = tmp_path / "runs" / "a-seed0" / "result.json"
    path.write_text(path.read_text()[:20])  # a damaged (truncated) result
    with pytest.raises(ValueError, match=r"a-seed0/result.json is damaged"):
        sweep.run_sweep(str(tmp_path), {"a": Variant(0.1)}, (0,), _run_one(calls), fingerprint={"data": 1})


def test_bad_sweeps_are_refused(tmp_path):
    with pytest.raises(ValueError, match="at least one variant"):
        sweep.run_sweep(str(tmp_path), {}, (0,), _run_one([]))
    with pytest.raises(ValueError, match="non-empty and distinct"):
        sweep.run_sweep(str(tmp_path), {"a": Variant()}, (0, 0), _run_one([]))


ROW = {"accuracy": 0.5, "self_bleu": 80.0, "entropy": 0.2, "corr": float("nan")}


def test_summary_and_table_hand_computed(tmp_path):
    two = sweep.summarise({"mle": {0: {"1": ROW}, 1: {"1": dict(ROW, accuracy=0.7, corr=0.5)}}})
    assert two["mle"]["1"]["accuracy"] == pytest.approx([0.6, 0.1])  # std 0.1414 / sqrt(2)
    assert two["mle"]["1"]["corr"][0] == 0.5 and np.isnan(two["mle"]["1"]["corr"][1])  # the NaN seed left out
    columns = (sweep.Column("accuracy", "accuracy"), sweep.Column("self_bleu", "Self-BLEU", 1),
               sweep.Column("corr", "Spearman"))
    table = sweep.markdown_table(two, columns, num_seeds=2, group_label="temperature", note="A note.")
    assert table.splitlines()[:3] == ["| method | temperature | accuracy | Self-BLEU | Spearman |", "|---|---|---|---|---|",
                                      "| mle | 1 | 0.600 ± 0.100 | 80.0 ± 0.0 | 0.500 |"]
    assert table.endswith("Mean ± standard error over 2 seeds. A note.\n")
    one = sweep.summarise({"mle": {0: {"1": ROW}}})
    assert "| mle | 1 | 0.500 | 80.0 | nan |" in sweep.markdown_table(one, columns, num_seeds=1, group_label="t")
    flat = sweep.summarise({"x": {0: {"gold": 1.0}, 1: {"gold": 3.0}}})
    assert "| x | 2.000 ± 1.000 |" in sweep.markdown_table(flat, (sweep.Column("gold", "gold"),), num_seeds=2)


def test_results_and_plots_are_written(tmp_path):
    per_run = {"mle": {0: {"0.5": ROW, "1": ROW}, 1: {"0.5": dict(ROW, accuracy=0.6), "1": ROW}},
               "iq": {0: {"0.5": dict(ROW, accuracy=0.4), "1": ROW}}}
    summary = sweep.summarise(per_run)
    sweep.write_results(str(tmp_path), summary, per_run, "| table |\n", extra_field=3)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["per_run"]["mle"]["1"]["0.5"]["accuracy"] == 0.6 and saved["extra_field"] == 3
    assert (tmp_path / "results.md").read_text() == "| table |\n"
    acc, bleu = sweep.Column("accuracy", "accuracy"), sweep.Column("self_bleu", "Self-BLEU")
    sweep.plot_scatter(summary, x=bleu, y=acc, path=str(tmp_path / "scatter.png"))  # NaN error bars left out
    sweep.plot_over_groups(summary, ys=(acc, bleu), path=str(tmp_path / "lines.png"), x_label="temperature")
    assert (tmp_path / "scatter.png").stat().st_size > 10_000 and (tmp_path / "lines.png").stat().st_size > 10_000


def test_cached_json_refuses_an_edited_or_damaged_file_naming_it(tmp_path):
    path = str(tmp_path / "pool.json")
    calls = []
    make = lambda: calls.append(1) or {"pairs": [1, 2, 3]}  # noqa: E731
    assert stages.cached_json(path, make) == {"pairs": [1, 2, 3]} and len(calls) == 1
    assert stages.cached_json(path, make) == {"pairs": [1, 2, 3]} and len(calls) == 1  # reused, not recomputed
    original = open(path).read()
    with open(path, "w") as f:
        f.write(original.replace("3", "4"))  # an edit that is still valid JSON
    with pytest.raises(ValueError, match=f"{path} does not match its checksum"):
        stages.cached_json(path, make)
    with open(path, "w") as f:
        f.write(original[:7])  # truncated
    with pytest.raises(ValueError, match=f"{path} does not match its checksum"):
        stages.cached_json(path, make)
    os.remove(path + ".sha256")  # no checksum (an older run's file): still refused when it is not JSON
    with pytest.raises(ValueError, match=f"{path} is not valid JSON"):
        stages.cached_json(path, make)
    with open(path, "w") as f:
        f.write(original)
    assert stages.cached_json(path, make) == {"pairs": [1, 2, 3]} and len(calls) == 1


def test_frontier_at_interpolates_through_the_origin_and_never_extrapolates():
    points = [(2.0, 0.4), (0.5, 0.7), (1.0, 0.5)]  # unsorted on purpose
    origin = (0.0, 0.6)
    # By hand: between (0, 0.6) and (0.5, 0.7) at 0.25 -> 0.65; between (1, 0.5) and (2, 0.4) at 1.5 -> 0.45.
    assert sweep.frontier_at(points, 0.25, origin) == pytest.approx(0.65)
    assert sweep.frontier_at(points, 1.5, origin) == pytest.approx(0.45)
    assert sweep.frontier_at(points, 1.0, origin) == pytest.approx(0.5)
    assert math.isnan(sweep.frontier_at(points, 2.5, origin))  # beyond the largest KL
    assert math.isnan(sweep.frontier_at(points, -0.1, origin))
    assert math.isnan(sweep.frontier_at([(1.0, float("nan"))], 0.5, origin))


def test_families_of_variants_merge_and_a_shared_name_is_refused_naming_both_fields():
    merged = sweep.merge_families(variants={"a": 1, "b": 2}, group_arms={"c": 3})
    assert merged == {"a": 1, "b": 2, "c": 3} and list(merged) == ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"variants and adversarial must not share names; both have \['b'\]"):
        sweep.merge_families(variants={"a": 1, "b": 2}, adversarial={"b": 5})
