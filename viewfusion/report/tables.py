"""Aggregate per-image metrics into the paper's tables: CSV, Markdown and LaTeX.

    viewfusion tables --metrics results/samples/*/*/*/v*/metrics.parquet --out results/tables
    viewfusion tables --metrics m.parquet --out tables --no-reference         # measured rows only
    viewfusion tables --metrics ... --out tables --weighting paper no_weighting \
        --angle paper relative --withheld withhold_car --withheld-category car
    viewfusion tables --metrics ... --out tables --speed-experiment tiny --speed-view-count 2

Every table is `DIR/{name}.csv` (full precision: mean and half-width of the 95% confidence
interval, t-distribution over images, or over objects where stated), `DIR/{name}.md` and
`DIR/{name}.tex` (mean ± CI); `DIR/README.md` lists what was written and what was skipped and
why. A table without data in the given files (no relative-angle experiment, no car images, ...)
is skipped with a note, never filled in. Tables:

- `views`: quality against the number of conditioning views, per experiment, checkpoint and
  sampler; view counts above the most views the experiment trained with (the metrics'
  `max_train_views`, from its checkpoint; `--max-train-views`, 6, where unrecorded) are marked as
  extrapolation.
- `against_nearest`: each sampler minus the copy baseline (`--sampler nearest`) on the same
  targets (item names), per experiment, checkpoint and view count: mean and CI of the paired
  per-image difference, the sharper test of whether samples beat copying a view.
- `per_category`: as pixelNeRF reports it: mean per object (over its targets), then mean and CI
  over objects, per category and overall.
- `weighting`, `relative_angle`: two experiments compared (the latest checkpoint of each), plus
  their paired difference over the targets both scored (same manifest item names).
- `withheld_category`: the withheld category against the seen ones, for the experiments trained
  without it and (as a baseline) the experiment trained on everything.
- `sampler_speed_quality`: columns exactly `sampler, steps, seconds_per_target, psnr, ssim,
  lpips`, one row per sampler and step count, measured on the same targets of one experiment,
  checkpoint and view count (`--speed-*`; by default `--main-experiment` when present and the
  setting with the most samplers, on ties its latest checkpoint); `sampler_speed_quality_detail`
  adds which, the counts, the CIs, and speed-up and PSNR change against the slowest sampler.

Published numbers (pixelNeRF, SRT) appear only as rows whose `source` starts with
"published:", next to measured rows (`source` "measured"), never averaged with them;
`--no-reference` leaves them out. LPIPS columns hold whichever net the metrics used (one net
per run: mixing VGG and AlexNet files is an error).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from viewfusion.errors import ViewFusionError
from viewfusion.model.samplers import BASELINE
from viewfusion.report.speedtable import table_speed
from viewfusion.report.tablefiles import COPY_KEYS, METRICS, copy_rows, summarize, with_source, write_table, write_text

# A setting is an experiment's checkpoint (its step and the first 12 hex digits of its weights'
# sha256, so two trainings that reached the same step are never pooled) and a sampler.
# The evaluation protocol comes first: rows of different protocols are never compared.
CONFIG = ["protocol", "experiment", "checkpoint_step", "checkpoint", "sampler", "steps"]
REQUIRED = {"item", "key", "category", "view_count", "protocol", "experiment", "checkpoint_step", "weights_sha256",
            "sampler", "steps", "seconds_per_target", *METRICS}
# viewfusion.evaluate.metrics' protocols, as the captions name them.
PROTOCOLS = {
    "official": "official ViewFusion protocol (seeded conditioning views and targets; SSIM pytorch-msssim, "
                "11x11 Gaussian)",
    "pixelnerf": "pixelNeRF's protocol (one source view per object from a view list, every other view a target; "
                 "SSIM scikit-image, 7x7 uniform)",
}
PUBLISHED_PROTOCOL = "pixelnerf"  # the published rows were measured under it
PIXELNERF = "published: pixelNeRF (Yu et al. 2021)"
PIXELNERF_NOTE = "1 input view (viewlist/src_dvr.txt), 23 targets, softras test split, per object then over objects"
SRT = "published: SRT (Sajjadi et al. 2022), PyTorch reimplementation"
SRT_NOTE = "3M iterations; NMR test PSNR only"
# pixelNeRF on NMR, (PSNR, SSIM, LPIPS-VGG): Yu et al. 2021, the per-category NMR table.
PIXELNERF_NUMBERS = {
    "airplane": (29.76, 0.947, 0.084), "bench": (26.35, 0.911, 0.116), "cabinet": (27.72, 0.910, 0.105),
    "car": (27.58, 0.942, 0.095), "chair": (23.84, 0.858, 0.146), "display": (24.22, 0.867, 0.129),
    "lamp": (28.58, 0.913, 0.114), "loudspeaker": (24.44, 0.855, 0.141), "rifle": (30.60, 0.968, 0.066),
    "sofa": (26.94, 0.908, 0.116), "table": (25.59, 0.898, 0.098), "telephone": (27.13, 0.922, 0.097),
    "vessel": (29.18, 0.939, 0.111), "overall": (26.80, 0.910, 0.108),
}
SRT_PSNR = 27.28


# ---------------------------------------------------------------- input

# One row per target and setting: the same file passed twice would double its weight in every mean.
SCORED_ONCE = ["item", "protocol", "experiment", "checkpoint_step", "weights_sha256", "sampler", "steps",
               "view_count"]


def load_metrics(paths: list[str | Path]) -> pd.DataFrame:
    """Concatenate per-image metrics files (parquet or CSV), checking columns and LPIPS net."""
    frames = []
    for path in map(Path, paths):
        if path.is_dir():  # pandas reads a folder as a (here empty) parquet dataset
            raise ViewFusionError(f"metrics file {path}: is a directory, expected a file")
        try:
            frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
        except (OSError, ValueError) as err:
            raise ViewFusionError(f"metrics file {path}: unreadable ({err})") from None
        missing = REQUIRED - set(frame.columns)
        if missing:
            raise ViewFusionError(f"metrics file {path}: missing columns {sorted(missing)}; rerun `viewfusion metrics`")
        frames.append(frame.assign(_file=str(path)))
    frame = pd.concat(frames, ignore_index=True)
    nets = set(frame["lpips_net"].dropna()) if "lpips_net" in frame else set()
    if len(nets) > 1:
        raise ViewFusionError(f"metrics files mix LPIPS nets {sorted(nets)}; tabulate one net at a time")
    twice = frame[frame.duplicated(SCORED_ONCE, keep=False)]
    if len(twice):
        first = twice.iloc[0]
        files = sorted(set(twice[twice["item"] == first["item"]]["_file"]))
        raise ViewFusionError(f"target {first['item']!r} is scored twice by one setting ({first['sampler']}, "
                              f"experiment {first['experiment']!r}) in {', '.join(files)}; pass each metrics file once")
    frame = frame.drop(columns="_file")
    frame["experiment"] = frame["experiment"].fillna("").astype(str)
    frame["sampler"] = frame["sampler"].astype(str)
    frame["checkpoint"] = frame["weights_sha256"].astype(str).str[:12]
    if "max_train_views" not in frame:
        frame["max_train_views"] = pd.NA  # metrics written before the column existed
    for column in ("checkpoint_step", "steps", "view_count", "max_train_views"):
        frame[column] = pd.to_numeric(frame[column]).astype("Int64")
    return frame


# ---------------------------------------------------------------- selections

def latest_checkpoint(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of each experiment's latest checkpoint (what the ablations compare)."""
    latest = frame.groupby("experiment")["checkpoint_step"].transform("max")
    return frame[(frame["checkpoint_step"] == latest).fillna(False).astype(bool) | latest.isna()]


def baseline_once(frame: pd.DataFrame) -> pd.DataFrame:
    """The copy baseline does not depend on the checkpoint (the manifests do not), so with several
    checkpoints evaluated its rows would repeat identically: keep them once per experiment (those
    of the latest checkpoint), with no checkpoint step."""
    is_base = frame["sampler"] == BASELINE
    if not is_base.any():
        return frame
    base = latest_checkpoint(frame[is_base]).copy()
    base["checkpoint_step"] = pd.array([pd.NA] * len(base), dtype="Int64")
    base["checkpoint"] = None
    return pd.concat([frame[~is_base], base], ignore_index=True)


def _with_published(frame: pd.DataFrame, reference: bool) -> bool:
    """Published rows only beside measured rows of their own protocol."""
    return reference and (frame["protocol"] == PUBLISHED_PROTOCOL).any()


def reference_rows(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows).astype({"view_count": "Int64"}) if rows else pd.DataFrame()


def trained_views(frame: pd.DataFrame, *, default: int) -> dict[str, int]:
    """{experiment: the most conditioning views it trained with}, `default` where unrecorded
    (a frame from `load_metrics`, which adds the column to older files)."""
    most = frame["max_train_views"].groupby(frame["experiment"]).max()
    return {name: default if pd.isna(n) else int(n) for name, n in most.items()}


# ---------------------------------------------------------------- the tables

def table_views(frame: pd.DataFrame, *, reference: bool, max_train_views: int = 6) -> pd.DataFrame:
    """Quality against the number of conditioning views (mean over images). A view count above
    the most views the experiment trained with (its checkpoint's, recorded by `viewfusion
    sample`; else `max_train_views`) is extrapolation."""
    table = summarize(baseline_once(frame), [*CONFIG, "view_count"])
    limit = table["experiment"].map(trained_views(frame, default=max_train_views))
    seen = table["view_count"] <= limit
    table.insert(len(CONFIG) + 1, "regime", [f"1-{n} views (as trained)" if ok else f"extrapolation (> {n})"
                               for n, ok in zip(limit, seen)])
    published = reference_rows([
        {"source": PIXELNERF, "protocol": PUBLISHED_PROTOCOL, "view_count": 1, "psnr": PIXELNERF_NUMBERS["overall"][0],
         "ssim": PIXELNERF_NUMBERS["overall"][1], "lpips": PIXELNERF_NUMBERS["overall"][2], "note": PIXELNERF_NOTE},
        {"source": SRT, "protocol": PUBLISHED_PROTOCOL, "view_count": pd.NA, "psnr": SRT_PSNR, "note": SRT_NOTE},
    ] if _with_published(frame, reference) else [])
    return with_source(table, published)


def table_against_baseline(frame: pd.DataFrame) -> tuple[pd.DataFrame | None, str]:
    """Per sampler setting: its metrics minus the copy baseline's on the same targets (paired)."""
    base = copy_rows(frame)
    if base.empty:
        return None, f"no `{BASELINE}` baseline rows (add {{name: {BASELINE}}} to evaluation.samplers)"
    pairs = frame[frame["sampler"] != BASELINE].merge(base[[*COPY_KEYS, *METRICS]], on=COPY_KEYS,
                                                        suffixes=("", "_base"))
    if pairs.empty:
        return None, f"no sampled target was also scored by the `{BASELINE}` baseline"
    diff = pairs[[*CONFIG, "view_count"]].assign(**{m: pairs[m] - pairs[f"{m}_base"] for m in METRICS})
    table = summarize(diff, [*CONFIG, "view_count"])
    return with_source(table, pd.DataFrame()), (f"sampler minus `{BASELINE}` (nearest view copied) on the same "
                                                "targets: mean ± 95% CI of the paired difference; PSNR and SSIM "
                                                "above 0 and LPIPS below 0 beat copying")


def table_per_category(frame: pd.DataFrame, *, reference: bool) -> pd.DataFrame:
    """pixelNeRF's convention: mean per object over its targets, then mean and CI over objects."""
    keys = [*CONFIG, "view_count"]
    objects = baseline_once(frame).groupby([*keys, "category", "key"], dropna=False)[list(METRICS)].mean()
    objects = objects.reset_index()
    per_category = summarize(objects, [*keys, "category"], count="objects")
    overall = summarize(objects, keys, count="objects").assign(category="overall")
    table = pd.concat([per_category, overall], ignore_index=True)
    table["_overall"] = table["category"] == "overall"
    table = table.sort_values([*keys, "_overall", "category"], kind="stable").drop(columns="_overall")
    published = reference_rows([
        {"source": PIXELNERF, "protocol": PUBLISHED_PROTOCOL, "view_count": 1, "category": category, "psnr": p,
         "ssim": s, "lpips": lp, "note": PIXELNERF_NOTE}
        for category, (p, s, lp) in PIXELNERF_NUMBERS.items()
    ] if _with_published(frame, reference) else [])
    return with_source(table.reset_index(drop=True), published)


def paired_difference(data: pd.DataFrame, *, first: str, second: str, label: str) -> pd.DataFrame:
    """first - second over the targets (item names) both experiments scored, per sampler setting."""
    keys = ["protocol", "sampler", "steps", "view_count"]
    a, b = (data[data["experiment"] == e].set_index([*keys, "item"])[list(METRICS)] for e in (first, second))
    common = a.index.intersection(b.index)
    if common.empty:
        return pd.DataFrame()
    diff = (a.loc[common] - b.loc[common]).reset_index()
    table = summarize(diff, keys)
    return table.assign(variant=label, experiment=f"{first} - {second}", checkpoint_step=pd.NA,
                        checkpoint=None)


def table_ablation(frame: pd.DataFrame, *, variants: dict[str, str], what: str) -> tuple[pd.DataFrame | None, str]:
    """Two experiments (the latest checkpoint of each) and their paired difference."""
    (label_a, first), (label_b, second) = variants.items()
    if first == second:
        raise ViewFusionError(f"{what}: the two experiments must differ (both {first!r})")
    found = sorted(set(frame["experiment"]))
    if not {first, second} <= set(found):
        return None, f"needs experiments {first!r} ({label_a}) and {second!r} ({label_b}); found {found}"
    data = latest_checkpoint(frame[frame["experiment"].isin([first, second])])
    # Only settings (protocol, sampler, steps, view count) that both experiments were scored in.
    keys = ["protocol", "sampler", "steps", "view_count"]
    settings = data.groupby(keys, dropna=False)["experiment"].transform("nunique")
    data = data[settings == 2]
    if data.empty:
        return None, f"experiments {first!r} and {second!r} share no sampler setting and view count"
    rows = summarize(data, ["experiment", "checkpoint_step", "checkpoint", *keys])
    rows.insert(0, "variant", rows["experiment"].map({first: label_a, second: label_b}))
    diff = paired_difference(data, first=first, second=second, label=f"{label_a} - {label_b} (paired)")
    table = pd.concat([rows, diff], ignore_index=True)
    table["_order"] = table["variant"].map({label_a: 0, label_b: 1}).fillna(2)  # as given, difference last
    table = table.sort_values([*keys, "_order"], kind="stable").drop(columns="_order")
    note = f"{label_a}: {first}, {label_b}: {second}, latest checkpoint of each"
    if diff.empty:
        note += "; no targets in common, so no paired difference"
    return with_source(table.reset_index(drop=True), pd.DataFrame()), note


def table_withheld(frame: pd.DataFrame, *, experiments: list[str], baseline: str | None,
                   category: str) -> tuple[pd.DataFrame | None, str]:
    """The withheld category against the seen ones, per image, for models trained without it."""
    withheld = [e for e in experiments if e in set(frame["experiment"])]
    if not withheld:
        return None, f"no experiment trained without {category!r} among {sorted(set(frame['experiment']))} (--withheld)"
    chosen = withheld + ([baseline] if baseline in set(frame["experiment"]) and baseline not in withheld else [])
    data = latest_checkpoint(frame[frame["experiment"].isin(chosen)]).copy()
    if not (data["category"] == category).any():
        return None, f"no {category!r} images scored for {chosen}"
    data["group"] = np.where(data["category"] == category, category, "other categories")
    data["category_in_training"] = ~data["experiment"].isin(withheld)
    keys = ["protocol", "experiment", "category_in_training", "checkpoint_step", "checkpoint", "sampler", "steps",
            "view_count", "group"]
    note = f"trained without {category}: {', '.join(withheld)}" + (
        f"; baseline trained on all: {chosen[-1]}" if len(chosen) > len(withheld) else "; no baseline experiment found")
    return with_source(summarize(data, keys), pd.DataFrame()), note


# ---------------------------------------------------------------- command

@dataclass(frozen=True)
class TableOptions:
    """What `viewfusion tables` is told beyond the metrics: the experiments' roles (the
    workflow passes its config's `roles:` section) and the speed table's selection."""

    reference: bool = True
    max_train_views: int = 6
    main_experiment: str | None = "paper"
    weighting: tuple[str, str] = ("paper", "no_weighting")
    angle: tuple[str, str] = ("paper", "relative")
    withheld: tuple[str, ...] = ("withhold_car",)
    withheld_category: str = "car"
    speed_experiment: str | None = None
    speed_checkpoint: int | None = None
    speed_view_count: int | None = None


def build_tables(frame: pd.DataFrame, options: TableOptions) -> tuple[dict, dict]:
    """name -> (table, title, note) for the tables with data; name -> reason for the skipped ones."""
    written, skipped = {}, {}
    written["views"] = (table_views(frame, reference=options.reference, max_train_views=options.max_train_views),
                        "Quality against the number of conditioning views", "mean ± 95% CI over targets")
    table, note = table_against_baseline(frame)
    if table is None:
        skipped["against_nearest"] = note
    else:
        written["against_nearest"] = (table, "Samples against the nearest-view copy (paired)", note)
    written["per_category"] = (table_per_category(frame, reference=options.reference),
                               "Per category (pixelNeRF's convention)",
                               "mean per object, then mean ± 95% CI over objects")
    ablations = (("weighting", {"weighted": options.weighting[0], "mean": options.weighting[1]},
                  "Weighted vs mean composition"),
                 ("relative_angle", {"absolute": options.angle[0], "relative": options.angle[1]},
                  "Absolute vs relative angle"))
    for name, variants, title in ablations:
        table, note = table_ablation(frame, variants=variants, what=name)
        if table is None:
            skipped[name] = note
        else:
            written[name] = (table, title, note)
    table, note = table_withheld(frame, experiments=options.withheld, baseline=options.main_experiment,
                                 category=options.withheld_category)
    if table is None:
        skipped["withheld_category"] = note
    else:
        written["withheld_category"] = (table, f"Withheld category ({options.withheld_category}) vs seen categories",
                                        note)
    exact, detail, note = table_speed(frame, experiment=options.speed_experiment,
                                      checkpoint_step=options.speed_checkpoint, view_count=options.speed_view_count,
                                      preferred=options.main_experiment)
    if exact is None:
        skipped["sampler_speed_quality"] = skipped["sampler_speed_quality_detail"] = note
    else:
        written["sampler_speed_quality"] = (exact, "Sampler speed against quality", note)
        written["sampler_speed_quality_detail"] = (detail, "Sampler speed against quality (detail)", note)
    # Every caption names the protocol(s) its measured rows were scored under.
    protocols = "protocol: " + "; ".join(PROTOCOLS.get(p, p) for p in sorted(set(frame["protocol"])))
    written = {name: (table, title, f"{note}; {protocols}" if note else protocols)
               for name, (table, title, note) in written.items()}
    return written, skipped


def readme(*, written: dict, skipped: dict, inputs: list[str], frame: pd.DataFrame) -> str:
    nets = sorted(set(frame["lpips_net"].dropna())) if "lpips_net" in frame else []
    lines = ["# Tables", "", f"From {len(frame)} per-image rows in {len(inputs)} metrics file(s).",
             "Means with the half-width of a 95% confidence interval (t-distribution). PSNR of identical",
             f"images is capped at 100 dB by `viewfusion metrics`. "
             f"LPIPS net: {', '.join(nets) or 'none (not computed)'}.",
             "Rows whose `source` starts with `published:` are numbers copied from papers, not measured here.", "",
             "## Written", ""]
    lines += [f"- `{name}` ({{csv,md,tex}}): {title}. {note}" for name, (_, title, note) in written.items()]
    lines += ["", "## Skipped", ""] + ([f"- `{name}`: {reason}" for name, reason in skipped.items()] or ["- none"])
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics", nargs="+", required=True, help="per-image metrics files (.parquet or .csv)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                        help="add the published pixelNeRF/SRT rows, labelled as such (default: on)")
    parser.add_argument("--weighting", nargs=2, metavar=("WEIGHTED", "MEAN"), default=list(TableOptions.weighting),
                        help="experiments with weighted and with mean composition (default: paper no_weighting)")
    parser.add_argument("--angle", nargs=2, metavar=("ABSOLUTE", "RELATIVE"), default=list(TableOptions.angle),
                        help="experiments with absolute and relative target angle (default: paper relative)")
    parser.add_argument("--withheld", nargs="*", metavar="EXP", default=list(TableOptions.withheld),
                        help="experiments trained without --withheld-category (default: withhold_car)")
    parser.add_argument("--main-experiment", default=TableOptions.main_experiment,
                        help="the paper model trained on all categories: baseline of the withheld-category table, "
                             "and the sampler table's experiment unless --speed-experiment is given (default: paper)")
    parser.add_argument("--withheld-category", default=TableOptions.withheld_category)
    parser.add_argument("--max-train-views", type=int, default=6,
                        help="view counts above it are extrapolation where the metrics do not record the "
                             "checkpoint's own max_views")
    parser.add_argument("--speed-experiment", default=None,
                        help="sampler table: this experiment (default: see --main-experiment)")
    parser.add_argument("--speed-checkpoint", type=int, default=None, help="sampler table: this checkpoint step")
    parser.add_argument("--speed-view-count", type=int, default=None,
                        help="sampler table: this view count "
                             "(default: the one with the most samplers, then the smallest)")


def run(args: argparse.Namespace) -> int:
    frame = load_metrics(args.metrics)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    options = TableOptions(**{f.name: tuple(value) if isinstance(value := getattr(args, f.name), list) else value
                              for f in fields(TableOptions)})
    written, skipped = build_tables(frame, options)
    for name, (table, title, note) in written.items():
        write_table(out_dir, name, table, title=title, note=note)
    for name in skipped:  # a table left from an earlier run with more data would mislead
        for suffix in (".csv", ".md", ".tex"):
            (out_dir / f"{name}{suffix}").unlink(missing_ok=True)
    write_text(out_dir / "README.md", readme(written=written, skipped=skipped, inputs=args.metrics, frame=frame))
    print(f"tables in {out_dir}: {', '.join(written)}" + (f"; skipped: {', '.join(skipped)}" if skipped else ""))
    return 0
