"""The sampler speed-against-quality table: the targets every sampler scored in one setting,
seconds and U-Net calls per target, and each sampler's paired difference to ancestral-2000."""

from __future__ import annotations

import numpy as np
import pandas as pd

from viewfusion.model.samplers import BASELINE
from viewfusion.report.tablefiles import ci_half_width, copy_rows, summarize, with_source

SETTING = ["protocol", "experiment", "view_count"]  # what the copies of a checkpoint's targets share with it


def speed_selection(frame: pd.DataFrame, *, experiment=None, checkpoint_step=None, view_count=None,
                    preferred: str | None = None) -> pd.DataFrame:
    """The rows of one experiment, checkpoint and view count: the ones given, else the setting
    with the most samplers (the `preferred` experiment when present; on ties the latest
    checkpoint, the trained model a speed/quality trade-off is about, then sort order), with the
    copy baseline's rows of the same targets (`copy_rows`: they name no weights of their own)."""
    if experiment is None and preferred in set(frame["experiment"]):
        experiment = preferred
    for column, value in (("experiment", experiment), ("view_count", view_count)):
        if value is not None:
            frame = frame[frame[column] == value]
    copies = copy_rows(frame)
    is_model = frame["sampler"] != BASELINE
    models = frame[is_model] if is_model.any() else frame  # copies alone: their own table
    if checkpoint_step is not None:
        models = models[models["checkpoint_step"] == checkpoint_step]
    if models.empty:
        return models
    grouped = models.groupby(["protocol", "experiment", "checkpoint_step", "checkpoint", "view_count"], dropna=False,
                             sort=True)
    # One row per setting, row i being group i of ngroup (both in sort order).
    settings = grouped[["sampler", "steps"]].apply(lambda g: len(g.drop_duplicates())).rename("samplers")
    settings = settings.reset_index()
    best = settings.sort_values(["samplers", "checkpoint_step"], ascending=[False, False],
                                na_position="last", kind="stable").index[0]
    selected = models[grouped.ngroup() == best]
    if is_model.any():
        setting = selected.iloc[0][SETTING]
        same = (copies[SETTING] == setting).all(axis=1)
        selected = pd.concat([selected, copies[same]], ignore_index=True)
    # Same targets for every sampler, so quality differences are the samplers' alone.
    per_sampler = selected.groupby(["sampler", "steps"], dropna=False)["item"].apply(set)
    common = set.intersection(*per_sampler)
    return selected[selected["item"].isin(common)]


ANCESTRAL = "ddpm"  # the paper's 2000-step sampler: the reference of the speed table
SPEED_EXTRA = ["unet_evals_per_target", "psnr_vs_ancestral", "psnr_vs_ancestral_ci95", "lpips_vs_ancestral",
               "lpips_vs_ancestral_ci95"]


def paired_vs_ancestral(selected: pd.DataFrame) -> pd.DataFrame:
    """Per sampler setting: its PSNR and LPIPS minus the ancestral sampler's on the same targets
    (mean and 95% CI half-width of the paired per-image differences); empty without ancestral rows."""
    columns = ["sampler", "steps", *SPEED_EXTRA[1:]]
    reference = selected[selected["sampler"] == ANCESTRAL].set_index("item")
    if reference.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for (sampler, steps), group in selected.groupby(["sampler", "steps"], dropna=False):
        group = group.set_index("item")
        row = {"sampler": sampler, "steps": steps}
        for metric in ("psnr", "lpips"):
            diff = (group[metric] - reference[metric]).dropna()
            row[f"{metric}_vs_ancestral"] = diff.mean()
            row[f"{metric}_vs_ancestral_ci95"] = float(ci_half_width(diff.std(), len(diff)))
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def table_speed(frame: pd.DataFrame, **selection) -> tuple[pd.DataFrame | None, pd.DataFrame | None, str]:
    """(exact table, detail table, note) of sampler speed against quality."""
    selected = speed_selection(frame, **selection)
    if selected.empty:
        return None, None, f"no rows match the selection {selection}"
    if "unet_evals_per_target" not in selected:
        selected = selected.assign(unet_evals_per_target=np.nan)  # metrics written before the column
    detail = summarize(selected, ["sampler", "steps"], means=("seconds_per_target", "unet_evals_per_target"))
    slowest = detail.loc[detail["seconds_per_target"].idxmax()] if detail["seconds_per_target"].notna().any() else None
    if slowest is not None:
        detail["speedup_vs_slowest"] = slowest["seconds_per_target"] / detail["seconds_per_target"]
        detail["psnr_vs_slowest"] = detail["psnr"] - slowest["psnr"]
    detail = detail.merge(paired_vs_ancestral(selected), on=["sampler", "steps"], how="left")
    first = selected.iloc[0]
    for i, column in enumerate(("protocol", "experiment", "checkpoint_step", "checkpoint", "view_count")):
        detail.insert(i, column, first[column])
    exact = detail[["sampler", "steps", "seconds_per_target", "psnr", "ssim", "lpips", *SPEED_EXTRA]]
    note = (f"{first['protocol']} protocol, experiment {first['experiment']!r}, "
            f"checkpoint step {first['checkpoint_step']} (weights {first['checkpoint']}), "
            f"{first['view_count']} views, {selected['item'].nunique()} targets scored by every sampler")
    return exact, with_source(detail, pd.DataFrame()), note
