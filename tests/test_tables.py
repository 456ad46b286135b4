"""`viewfusion tables` on a hand-made per-image file: every number checked exactly, including the
95% confidence intervals (t quantiles written out here, not taken from scipy), published rows kept
apart from measured ones, and tables without data skipped with a note.

    .venv/bin/python -m pytest -q tests/test_tables.py
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from viewfusion import cli
from viewfusion.errors import ViewFusionError
from viewfusion.report import speedtable, tables

T_975 = {1: 12.706204736174707, 2: 4.302652729911275}  # Student t, 97.5% quantile, by degrees of freedom


def ci(values: list[float]) -> float:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return T_975[n - 1] * std / math.sqrt(n)


def row(item, key, category, view_count, psnr, ssim, lpips, *, experiment="paper", sampler="ddim", steps=50,
        seconds=1.0, protocol="official"):
    return {"item": item, "key": key, "synset": "x", "category": category, "object_id": key, "target_view": 1,
            "view_count": view_count, "experiment": experiment, "checkpoint_step": 100, "sampler": sampler,
            "steps": steps, "seconds_per_target": seconds, "psnr": psnr, "ssim": ssim, "lpips": lpips,
            "lpips_net": "vgg", "weights_sha256": f"{experiment:a<64}", "protocol": protocol}


def hand_made() -> pd.DataFrame:
    rows = [
        # paper, ddim-50, one view: objects k1 (car, two targets) and k2 (chair)
        row("k1-t01-v1-0", "k1", "car", 1, 20.0, 0.5, 0.1),
        row("k1-t02-v1-1", "k1", "car", 1, 22.0, 0.6, 0.2),
        row("k2-t01-v1-0", "k2", "chair", 1, 24.0, 0.7, 0.3),
        # paper, ddim-50, two views
        row("k1-t01-v2-0", "k1", "car", 2, 30.0, 0.8, 0.05),
        row("k2-t01-v2-0", "k2", "chair", 2, 34.0, 0.9, 0.15),
        # the mean-composition ablation on the one-view targets
        row("k1-t01-v1-0", "k1", "car", 1, 19.0, 0.5, 0.2, experiment="no_weighting"),
        row("k1-t02-v1-1", "k1", "car", 1, 20.0, 0.5, 0.2, experiment="no_weighting"),
        row("k2-t01-v1-0", "k2", "chair", 1, 21.0, 0.5, 0.2, experiment="no_weighting"),
    ]
    # the paper's ancestral sampler on the same one-view targets, 40x slower
    rows += [row(r["item"], r["key"], r["category"], 1, r["psnr"] + 1, r["ssim"], r["lpips"], sampler="ddpm",
                 steps=2000, seconds=40.0) for r in rows[:3]]
    return pd.DataFrame(rows)


@pytest.fixture()
def out(tmp_path):
    path = tmp_path / "metrics.parquet"
    hand_made().to_parquet(path)
    assert cli.main(["tables", "--metrics", str(path), "--out", str(tmp_path / "tables")]) == 0
    return tmp_path / "tables"


def test_views_table_exact(out):
    views = pd.read_csv(out / "views.csv")
    measured = views[views["source"] == "measured"]
    one = measured[(measured.experiment == "paper") & (measured.sampler == "ddim") & (measured.view_count == 1)].iloc[0]
    assert one["n"] == 3 and one["psnr"] == pytest.approx(22.0, abs=1e-12)
    assert one["psnr_ci95"] == pytest.approx(ci([20, 22, 24]), abs=1e-9)
    assert one["psnr_ci95"] == pytest.approx(4.302652729911275 * 2 / math.sqrt(3), abs=1e-9)
    assert one["ssim"] == pytest.approx(0.6, abs=1e-12)
    assert one["ssim_ci95"] == pytest.approx(ci([0.5, 0.6, 0.7]), abs=1e-9)
    assert one["lpips"] == pytest.approx(0.2, abs=1e-12)
    assert one["lpips_ci95"] == pytest.approx(ci([0.1, 0.2, 0.3]), abs=1e-9)
    two = measured[(measured.experiment == "paper") & (measured.sampler == "ddim") & (measured.view_count == 2)].iloc[0]
    assert two["psnr"] == pytest.approx(32.0) and two["psnr_ci95"] == pytest.approx(12.706204736174707 * 2, abs=1e-9)
    assert set(measured["regime"]) == {"1-6 views (as trained)"}
    assert len(measured) == 4  # paper ddim v1, v2; paper ddpm v1; no_weighting ddim v1


def test_extrapolation_follows_each_experiments_own_training_views(tmp_path):
    """`max_train_views` (from the checkpoint, via the chunk markers) decides the regime per
    experiment; where it is missing (older metrics files) `--max-train-views` does."""
    frame = hand_made()
    frame["max_train_views"] = [1 if e == "paper" else None for e in frame["experiment"]]
    frame["max_train_views"] = frame["max_train_views"].astype("Int64")
    frame.to_parquet(tmp_path / "m.parquet")
    views = tables.table_views(tables.load_metrics([str(tmp_path / "m.parquet")]), reference=False,
                               max_train_views=6)
    regime = {(r.experiment, r.sampler, r.view_count): r.regime for r in views.itertuples()}
    assert regime[("paper", "ddim", 1)] == "1-1 views (as trained)"
    assert regime[("paper", "ddim", 2)] == "extrapolation (> 1)"
    assert regime[("no_weighting", "ddim", 1)] == "1-6 views (as trained)"


def test_published_rows_are_labelled_and_only_beside_their_protocol(out, tmp_path):
    """pixelNeRF's numbers were measured under its protocol: official-protocol tables never show
    them, pixelnerf-protocol tables do, and every measured row and caption names its protocol."""
    official = pd.read_csv(out / "views.csv")
    assert set(official["source"]) == {"measured"} and set(official["protocol"]) == {"official"}
    assert "official ViewFusion protocol" in (out / "views.md").read_text()
    path = tmp_path / "pixelnerf.parquet"
    hand_made().assign(protocol="pixelnerf").to_parquet(path)
    assert cli.main(["tables", "--metrics", str(path), "--out", str(tmp_path / "pn")]) == 0
    views = pd.read_csv(tmp_path / "pn" / "views.csv")
    published = views[views["source"].str.startswith("published:")]
    assert set(published["source"]) == {tables.PIXELNERF, tables.SRT} and set(views["protocol"]) == {"pixelnerf"}
    pixelnerf = published[published["source"] == tables.PIXELNERF].iloc[0]
    assert (pixelnerf["psnr"], pixelnerf["ssim"], pixelnerf["lpips"],
            pixelnerf["view_count"]) == (26.80, 0.910, 0.108, 1)
    assert published["n"].isna().all() and published["experiment"].isna().all()
    per_category = pd.read_csv(tmp_path / "pn" / "per_category.csv")
    ref = per_category[per_category["source"] == tables.PIXELNERF].set_index("category")
    assert len(ref) == 14 and tuple(ref.loc["chair", ["psnr", "ssim", "lpips"]]) == (23.84, 0.858, 0.146)
    md = (tmp_path / "pn" / "views.md").read_text()
    assert "published: pixelNeRF" in md and "pixelNeRF's protocol" in md
    assert r"\midrule" in (tmp_path / "pn" / "views.tex").read_text()
    assert cli.main(["tables", "--metrics", str(path), "--out", str(tmp_path / "bare"), "--no-reference"]) == 0
    assert set(pd.read_csv(tmp_path / "bare" / "views.csv")["source"]) == {"measured"}


def test_per_category_means_per_object_first(out):
    table = pd.read_csv(out / "per_category.csv")
    mine = table[(table.source == "measured") & (table.experiment == "paper") & (table.sampler == "ddim")
                 & (table.view_count == 1)].set_index("category")
    assert list(mine.index) == ["car", "chair", "overall"]
    assert mine.loc["car", "objects"] == 1 and mine.loc["car", "psnr"] == pytest.approx(21.0)
    assert math.isnan(mine.loc["car", "psnr_ci95"])  # one object: no interval
    # overall: objects k1 (21) and k2 (24), not the three targets (22)
    assert mine.loc["overall", "psnr"] == pytest.approx(22.5)
    assert mine.loc["overall", "psnr_ci95"] == pytest.approx(ci([21.0, 24.0]), abs=1e-9)
    assert mine.loc["overall", "ssim"] == pytest.approx((0.55 + 0.7) / 2)


def test_weighting_ablation_with_paired_difference(out):
    table = pd.read_csv(out / "weighting.csv")
    assert list(table["variant"]) == ["weighted", "mean", "weighted - mean (paired)"]
    diff = table.iloc[2]
    assert diff["n"] == 3 and diff["psnr"] == pytest.approx(2.0)  # (1, 2, 3)
    assert diff["psnr_ci95"] == pytest.approx(ci([1.0, 2.0, 3.0]), abs=1e-9)
    assert diff["lpips"] == pytest.approx(0.0, abs=1e-12)
    assert table.iloc[1]["psnr"] == pytest.approx(20.0) and table.iloc[1]["experiment"] == "no_weighting"


def test_sampler_speed_quality_exact(out):
    table = pd.read_csv(out / "sampler_speed_quality.csv")
    assert list(table.columns) == ["sampler", "steps", "seconds_per_target", "psnr", "ssim", "lpips",
                                   "unet_evals_per_target", "psnr_vs_ancestral", "psnr_vs_ancestral_ci95",
                                   "lpips_vs_ancestral", "lpips_vs_ancestral_ci95"]
    core = ["sampler", "steps", "seconds_per_target", "psnr", "ssim", "lpips"]
    assert table[core].to_dict("records") == [
        {"sampler": "ddim", "steps": 50, "seconds_per_target": 1.0, "psnr": pytest.approx(22.0),
         "ssim": pytest.approx(0.6), "lpips": pytest.approx(0.2)},
        {"sampler": "ddpm", "steps": 2000, "seconds_per_target": 40.0, "psnr": pytest.approx(23.0),
         "ssim": pytest.approx(0.6), "lpips": pytest.approx(0.2)},
    ]
    # paired with ancestral on the same items: ddim minus ddpm, hand-computed from hand_made()
    frame = hand_made()
    sel = frame[(frame["experiment"] == "paper") & (frame["view_count"] == 1)]
    a, b = (sel[sel["sampler"] == s].set_index("item")["psnr"] for s in ("ddim", "ddpm"))
    diff = (a - b).dropna()
    row = table.set_index("sampler")
    assert row.loc["ddim", "psnr_vs_ancestral"] == pytest.approx(diff.mean())
    assert row.loc["ddim", "psnr_vs_ancestral_ci95"] == pytest.approx(ci(list(diff)) if len(diff) > 1 else math.nan,
                                                                     nan_ok=True)
    assert row.loc["ddpm", "psnr_vs_ancestral"] == 0 and row.loc["ddpm", "lpips_vs_ancestral"] == 0
    detail = pd.read_csv(out / "sampler_speed_quality_detail.csv").set_index("sampler")
    assert detail.loc["ddim", "speedup_vs_slowest"] == pytest.approx(40.0)
    assert detail.loc["ddim", "psnr_vs_slowest"] == pytest.approx(-1.0)
    assert set(detail["experiment"]) == {"paper"} and set(detail["view_count"]) == {1}


def test_tables_without_data_are_skipped_with_a_note(out):
    readme = (out / "README.md").read_text()
    for name in ("relative_angle", "withheld_category"):
        assert not (out / f"{name}.csv").exists()
        assert f"- `{name}`: " in readme.split("## Skipped")[1]
    for name in ("views", "per_category", "weighting", "sampler_speed_quality"):
        for suffix in (".csv", ".md", ".tex"):
            assert (out / f"{name}{suffix}").stat().st_size > 0


def test_withheld_category_table(tmp_path):
    frame = hand_made()
    extra = frame[(frame.experiment == "paper") & (frame.sampler == "ddim") & (frame.view_count == 1)]
    frame = pd.concat([frame, extra.assign(experiment="withhold_car", psnr=extra["psnr"] - 5)])
    path = tmp_path / "m.csv"
    frame.to_csv(path, index=False)
    assert cli.main(["tables", "--metrics", str(path), "--out", str(tmp_path / "t")]) == 0
    table = pd.read_csv(tmp_path / "t" / "withheld_category.csv")
    held = table[(table.experiment == "withhold_car") & (table.group == "car")].iloc[0]
    assert held["n"] == 2 and held["psnr"] == pytest.approx(16.0) and not held["category_in_training"]
    seen = table[(table.experiment == "paper") & (table.group == "other categories") & (table.sampler == "ddim")
                 & (table.view_count == 1)].iloc[0]
    assert seen["n"] == 1 and seen["psnr"] == pytest.approx(24.0) and seen["category_in_training"]


def test_mixed_lpips_nets_are_refused(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    hand_made().to_csv(a, index=False)
    hand_made().assign(lpips_net="alex").to_csv(b, index=False)
    with pytest.raises(ViewFusionError, match="mix LPIPS nets"):
        tables.load_metrics([a, b])


def test_against_nearest_is_the_paired_difference(tmp_path):
    frame = hand_made()
    copies = [row(r["item"], r["key"], r["category"], 1, 21.0, 0.55, 0.25, sampler="nearest", steps=0, seconds=0.0)
              for r in frame.iloc[:3].to_dict("records")]
    path = tmp_path / "metrics.csv"
    pd.concat([frame, pd.DataFrame(copies)]).to_csv(path, index=False)
    assert cli.main(["tables", "--metrics", str(path), "--out", str(tmp_path / "t"), "--no-reference"]) == 0
    table = pd.read_csv(tmp_path / "t" / "against_nearest.csv")
    # Only the paper experiment's one-view targets have copies: ddim and ddpm, 3 targets each.
    assert sorted(zip(table.sampler, table.view_count, table.n)) == [("ddim", 1, 3), ("ddpm", 1, 3)]
    ddim = table[table.sampler == "ddim"].iloc[0]
    assert ddim["psnr"] == pytest.approx(1.0) and ddim["psnr_ci95"] == pytest.approx(ci([-1, 1, 3]), abs=1e-9)
    assert ddim["ssim"] == pytest.approx(0.05) and ddim["lpips"] == pytest.approx(-0.05)
    assert table[table.sampler == "ddpm"].iloc[0]["psnr"] == pytest.approx(2.0)


def test_against_nearest_is_skipped_without_copies(out):
    assert not (out / "against_nearest.csv").exists()
    assert "`against_nearest`: no `nearest` baseline rows" in (out / "README.md").read_text()


def test_views_table_lists_the_copy_baseline_once_per_experiment(tmp_path):
    # Two checkpoints of one experiment score the same copies: the baseline is one row, stepless.
    frame = hand_made()
    copies = [row(r["item"], r["key"], r["category"], 1, 21.0, 0.55, 0.25, sampler="nearest", steps=0, seconds=0.0)
              for r in frame.iloc[:3].to_dict("records")]
    later = [{**c, "checkpoint_step": 200} for c in copies]
    path = tmp_path / "metrics.csv"
    pd.concat([frame, pd.DataFrame(copies + later)]).to_csv(path, index=False)
    assert cli.main(["tables", "--metrics", str(path), "--out", str(tmp_path / "t"), "--no-reference"]) == 0
    views = pd.read_csv(tmp_path / "t" / "views.csv")
    base = views[views.sampler == "nearest"]
    assert len(base) == 1 and base.iloc[0]["n"] == 3 and pd.isna(base.iloc[0]["checkpoint_step"])
    assert base.iloc[0]["psnr"] == pytest.approx(21.0)
    per_category = pd.read_csv(tmp_path / "t" / "per_category.csv")
    assert len(per_category[(per_category.sampler == "nearest") & (per_category.category == "overall")]) == 1
    # the paired table still compares each checkpoint with its own copies
    against = pd.read_csv(tmp_path / "t" / "against_nearest.csv")
    assert sorted(against.checkpoint_step.unique()) == [100]


def test_sampler_speed_table_takes_the_latest_checkpoint_on_ties(tmp_path):
    frame = hand_made()
    earlier = frame.assign(checkpoint_step=50, psnr=frame["psnr"] - 5)
    path = tmp_path / "metrics.csv"
    pd.concat([earlier, frame]).to_csv(path, index=False)
    assert cli.main(["tables", "--metrics", str(path), "--out", str(tmp_path / "t"), "--no-reference"]) == 0
    detail = pd.read_csv(tmp_path / "t" / "sampler_speed_quality_detail.csv")
    assert set(detail.checkpoint_step) == {100}
    exact = pd.read_csv(tmp_path / "t" / "sampler_speed_quality.csv")
    assert list(exact.psnr) == [pytest.approx(22.0), pytest.approx(23.0)]  # step 100's, not step 50's


def test_two_trainings_at_the_same_step_are_never_pooled(tmp_path):
    """Rows of other weights at the same experiment and step (a retrain) stay apart, each row
    naming its weights; before, both were averaged into one row labelled with the step."""
    frame = hand_made()
    paper = frame[(frame["experiment"] == "paper") & (frame["sampler"] == "ddim")]
    retrained = paper.assign(weights_sha256="b" * 64, psnr=paper["psnr"] + 10)
    both = pd.concat([paper, retrained], ignore_index=True)
    both.to_parquet(tmp_path / "m.parquet")
    table = tables.table_views(tables.load_metrics([tmp_path / "m.parquet"]), reference=False)
    assert sorted(set(table["checkpoint"])) == ["b" * 12, "paper" + "a" * 7]
    per = table.set_index(["checkpoint", "view_count"])["psnr"]
    assert per.loc[("b" * 12, 1)] == pytest.approx(per.loc[("paper" + "a" * 7, 1)] + 10)


def test_copies_pair_with_samples_of_the_ema_weights(tmp_path):
    """The pipeline's copy rows name the checkpoint's raw weights, its samplers' the EMA weights
    (`--weights auto`): the copies must still be the paired baseline and sit in the speed table
    (they were dropped from both, and the demo's speed table showed the copy alone)."""
    frame = hand_made()
    copies = [row(r["item"], r["key"], r["category"], 1, 21.0, 0.55, 0.25, sampler="nearest", steps=0, seconds=0.0)
              for r in frame.iloc[:3].to_dict("records")]
    raw = pd.DataFrame(copies).assign(weights_sha256="r" * 64)
    path = tmp_path / "metrics.csv"
    pd.concat([frame, raw]).to_csv(path, index=False)
    assert cli.main(["tables", "--metrics", str(path), "--out", str(tmp_path / "t"), "--no-reference"]) == 0
    against = pd.read_csv(tmp_path / "t" / "against_nearest.csv")
    assert sorted(zip(against.sampler, against.view_count, against.n)) == [("ddim", 1, 3), ("ddpm", 1, 3)]
    speed = pd.read_csv(tmp_path / "t" / "sampler_speed_quality.csv")
    assert sorted(speed.sampler) == ["ddim", "ddpm", "nearest"]
    # one sampler beside the copies (the demo): the sampler's setting, with the copies
    demo = pd.concat([frame[(frame.sampler == "ddim") & (frame.experiment == "paper")], raw])
    selected = speedtable.speed_selection(_loaded(demo, tmp_path), view_count=1)
    assert sorted(set(selected.sampler)) == ["ddim", "nearest"] and len(selected) == 6
    # copies alone, scored beside two checkpoints: still their table
    alone = pd.concat([raw, raw.assign(checkpoint_step=200)])
    assert len(speedtable.speed_selection(_loaded(alone, tmp_path), view_count=1)) == 3


def test_two_different_copies_of_one_target_are_refused(tmp_path):
    frame = hand_made()
    copies = [row(r["item"], r["key"], r["category"], 1, 21.0, 0.55, 0.25, sampler="nearest", steps=0, seconds=0.0)
              for r in frame.iloc[:3].to_dict("records")]
    other = [{**c, "psnr": 30.0, "checkpoint_step": 200} for c in copies]
    path = tmp_path / "metrics.csv"
    pd.concat([frame, pd.DataFrame(copies + other)]).to_csv(path, index=False)
    with pytest.raises(ViewFusionError, match="two different `nearest` copies"):
        tables.table_against_baseline(tables.load_metrics([path]))


def _loaded(frame: pd.DataFrame, tmp_path) -> pd.DataFrame:
    path = tmp_path / "loaded.csv"
    frame.to_csv(path, index=False)
    return tables.load_metrics([path])


def test_a_metrics_file_passed_twice_is_refused(tmp_path, capsys):
    """Every mean would count its targets twice; before, only a copy file passed twice was caught."""
    path = tmp_path / "m.csv"
    hand_made().to_csv(path, index=False)
    assert cli.main(["tables", "--metrics", str(path), str(path), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "scored twice" in err and str(path) in err, err
    assert not (tmp_path / "t").exists()
