"""The arithmetic and files of metric tables: per-group means with 95% t-intervals, and the
CSV (full precision), Markdown and LaTeX (mean ± CI) files `viewfusion tables` writes.

    summarize(frame, ["experiment", "view_count"])   # n, psnr, psnr_ci95, ssim, ... per group
    write_table(Path("results/tables"), "views", table, title="Quality against views")
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from viewfusion.errors import ViewFusionError
from viewfusion.fsutil import atomic_path
from viewfusion.model.samplers import BASELINE

METRICS = ("psnr", "ssim", "lpips")
MEASURED = "measured"  # the source of every measured row; published rows name their paper
DECIMALS = {"psnr": 2, "ssim": 3, "lpips": 3, "seconds_per_target": 3}


# What identifies a copy-baseline target: a copied view depends on the manifest entry and the
# data, not on the checkpoint beside which it was sampled.
COPY_KEYS = ["protocol", "experiment", "view_count", "item"]


# ---------------------------------------------------------------- statistics

def ci_half_width(std: pd.Series | float, n: pd.Series | float, *, level: float = 0.95):
    """Half-width of the t-interval of a mean: t_{(1+level)/2, n-1} * std / sqrt(n); NaN for n < 2."""
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(n > 1, stats.t.ppf((1 + level) / 2, np.maximum(n - 1, 1)), np.nan)
        return t * np.asarray(std, dtype=float) / np.sqrt(n)


def summarize(frame: pd.DataFrame, by: list[str], *, count: str = "n", means: tuple[str, ...] = ()) -> pd.DataFrame:
    """Per group: count of rows and, per metric, the mean and its 95% CI half-width (plus plain
    means of the `means` columns)."""
    grouped = frame.groupby(by, dropna=False, sort=True)
    out = grouped.size().rename(count).to_frame()
    for metric in METRICS:
        agg = grouped[metric].agg(["mean", "std", "count"])
        out[metric] = agg["mean"]
        out[f"{metric}_ci95"] = ci_half_width(agg["std"], agg["count"])
    for column in means:
        out[column] = grouped[column].mean()
    return out.reset_index()


def format_mean_ci(mean: float, ci: float, decimals: int) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.{decimals}f}" if pd.isna(ci) else f"{mean:.{decimals}f} ± {ci:.{decimals}f}"


def display_frame(table: pd.DataFrame) -> pd.DataFrame:
    """mean ± CI strings for Markdown and LaTeX; missing values as an en dash."""
    out = table.copy()
    for metric in METRICS:
        if metric in out:
            ci = out.pop(f"{metric}_ci95") if f"{metric}_ci95" in out else pd.Series(np.nan, index=out.index)
            out[metric] = [format_mean_ci(m, c, DECIMALS[metric]) for m, c in zip(out[metric], ci)]
    for column in out.columns:
        if column not in METRICS:
            decimals = DECIMALS.get(column, 3)
            out[column] = [("–" if pd.isna(v) else f"{v:.{decimals}g}" if isinstance(v, float) else str(v))
                           for v in out[column]]
    return out


def latex_escape(text: str) -> str:
    text = text.replace("\\", r"\textbackslash{}")
    for char in "&%$#_{}":
        text = text.replace(char, "\\" + char)
    return text.replace("~", r"\textasciitilde{}").replace("^", r"\^{}").replace("±", r"$\pm$").replace("–", "--")


def to_latex(display: pd.DataFrame, *, title: str) -> str:
    """A booktabs tabular; a rule separates measured rows from published ones."""
    columns = list(display.columns)
    lines = [f"% {title}", r"\begin{tabular}{" + "l" * len(columns) + "}", r"\toprule",
             " & ".join(latex_escape(c) for c in columns) + r" \\", r"\midrule"]
    previous = None
    for row in display.itertuples(index=False):
        source = getattr(row, "source", None)
        if previous is not None and source != previous:
            lines.append(r"\midrule")
        previous = source
        lines.append(" & ".join(latex_escape(str(v)) for v in row) + r" \\")
    return "\n".join([*lines, r"\bottomrule", r"\end{tabular}", ""])


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_table(out_dir: Path, name: str, table: pd.DataFrame, *, title: str, note: str = "") -> None:
    with atomic_path(out_dir / f"{name}.csv") as tmp:
        table.to_csv(tmp, index=False)
    display = display_frame(table)
    markdown = display.to_markdown(index=False, disable_numparse=True)
    write_text(out_dir / f"{name}.md", f"# {title}\n\n{note + chr(10) + chr(10) if note else ''}{markdown}\n")
    write_text(out_dir / f"{name}.tex", to_latex(display, title=f"{title}. {note}".strip(". ")))


def copy_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The copy baseline's rows, once per target (COPY_KEYS), to pair with every checkpoint's
    samples of the same targets. Its markers name the checkpoint's raw weights while the samplers'
    usually name the EMA ones, so pairing on the weights found no copy at all (issue 19's overlay
    and the demo lost the baseline from against_nearest and the speed table)."""
    base = frame[frame["sampler"] == BASELINE].drop_duplicates([*COPY_KEYS, *METRICS])
    twice = base[base.duplicated(COPY_KEYS)]
    if len(twice):
        first = twice.iloc[0]
        raise ViewFusionError(f"target {first['item']!r} of experiment {first['experiment']!r} has two different "
                              f"`{BASELINE}` copies: the metrics files come from different data; pass one "
                              "evaluation's files")
    return base


def with_source(measured: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    measured = measured.assign(source=MEASURED)
    table = pd.concat([measured, published], ignore_index=True) if len(published) else measured
    return table[["source", *[c for c in table.columns if c != "source"]]]
