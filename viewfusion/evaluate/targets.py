"""Manifest targets as model batches: stacked conditioning views, target angles, generation, and
the nearest-view copy baseline; shared by sampling, validation, probes and the GPU check.

    batch = build_batch(items, objects, relative=model.relative, device=device)
    images, weights, steps = generate_batch(model, batch, spec, save_weights=False, weights_every=1)
"""

from __future__ import annotations

import numpy as np
import torch

from viewfusion.data.loader import relative_angle
from viewfusion.data.nmr import view_angle, view_distance
from viewfusion.model.samplers import SamplerSpec


def build_batch(items: list[dict], objects: dict, *, relative: bool, device: torch.device) -> dict:
    """Stack targets with possibly different view counts; padding views are zeros (masked)."""
    n_max = max(len(it["cond_views"]) for it in items)
    first = objects[items[0]["key"]].images
    y_cond = torch.zeros(len(items), n_max, *first.shape[1:])
    for row, it in enumerate(items):
        views = objects[it["key"]].images
        y_cond[row, : len(it["cond_views"])] = views[it["cond_views"]]
    batch = {
        "y_cond": y_cond.to(device),
        "view_count": torch.tensor([len(it["cond_views"]) for it in items], device=device),
        "seeds": torch.tensor([int(it["seed"]) for it in items]),
    }
    batch["angle"] = target_angles(items, relative=relative).to(device)
    if relative:
        batch["y_ref"] = torch.stack([objects[it["key"]].images[it["cond_views"][0]] for it in items]).to(device)
    return batch


def target_angles(items: list[dict], *, relative: bool) -> torch.Tensor:
    """(B,) float32 angles exactly as the training loader computes them (data.loader): the target
    azimuth, or for the relative variant the azimuth relative to the first conditioning view.
    (Multiplying in float32 here put 6 of the 24 views one ulp off the trained angles.)"""
    angles = [relative_angle(it["target_view"], it["cond_views"][0]) if relative else view_angle(it["target_view"])
              for it in items]
    return torch.tensor(np.asarray(angles, dtype=np.float32))


def generate_batch(model, batch: dict, spec: SamplerSpec, *, save_weights: bool, weights_every: int):
    kwargs = dict(sampler=spec.name, steps=spec.steps, eta=spec.eta, spacing=spec.spacing, seeds=batch["seeds"])
    if "y_ref" in batch:
        kwargs["y_ref"] = batch["y_ref"]
    with torch.inference_mode():
        result = model.generate(
            batch["y_cond"], batch["view_count"], batch["angle"],
            return_weights=save_weights, weights_every=weights_every, **kwargs,
        )
    if save_weights:
        return result.images.cpu(), result.weights.cpu(), result.weight_steps
    return result.cpu(), None, None


def nearest_view_images(items: list[dict], objects: dict) -> torch.Tensor:
    """(B,3,H,W): per target, the conditioning view at the smallest circular azimuth distance
    (ties: the first listed, so the result is deterministic)."""
    picks = [min(it["cond_views"], key=lambda v, t=it["target_view"]: view_distance(v, t)) for it in items]
    return torch.stack([objects[it["key"]].images[v] for it, v in zip(items, picks)])
