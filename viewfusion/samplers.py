"""Sampler names, default steps, U-Net cost and path tags: one torch-free owner that the
samplers (viewfusion.diffusion), the CLI, the workflow (Snakefile wildcards, schema check), the
markers and the tables ask.

    tag(name, steps, eta)  -> "ddim-50", "ddim-50-eta1", "ddpm-full", "dpmpp-2m-10", "nearest"
    parse_tag(tag)         -> (name, steps | None, eta)          (inverse of tag)
    TAG_PATTERN            the regular expression of every tag (a Snakemake wildcard constraint)
    unet_calls(name, steps, num_timesteps) -> U-Net calls per target and conditioning view
    sampler_name(marker)   -> the name a chunk marker's setting has in metrics rows: "ddim-eta1"
    label(name, steps)     -> how tables and figures print a setting: "ddim-eta1-50", "ddpm-full"
"""

from __future__ import annotations

import re

# Model samplers: the paper's ancestral sampler, DDIM and the few-step solvers (viewfusion.solvers).
SOLVER_KINDS = ("dpmpp-2m", "dpmpp-2m-sde", "unipc", "euler", "heun")
SAMPLER_KINDS = ("ddpm", "ddim", *SOLVER_KINDS)
BASELINE = "nearest"  # the copy baseline: the conditioning view nearest the target, no network
ALL_SAMPLERS = (*SAMPLER_KINDS, BASELINE)
# Steps when none are given ("ddpm" always runs the whole trained schedule).
DEFAULT_STEPS = {"ddim": 50, "dpmpp-2m": 20, "dpmpp-2m-sde": 20, "unipc": 20, "euler": 20, "heun": 20}

_NAMES = "|".join(re.escape(k) for k in sorted(SAMPLER_KINDS, key=len, reverse=True))
TAG_PATTERN = rf"{BASELINE}|(?:{_NAMES})-(?:full|[0-9]+)(?:-eta[0-9.]+)?"
_TAG = re.compile(rf"(?P<name>{_NAMES})-(?P<steps>full|[0-9]+)(?:-eta(?P<eta>[0-9.]+))?")


def check_kind(kind: str) -> None:
    if kind not in SAMPLER_KINDS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLER_KINDS)}, got {kind!r}")


def unet_calls(kind: str, steps: int | None, num_timesteps: int) -> int:
    """U-Net evaluations per target and conditioning view of sampler `kind` with `steps` steps
    (None: its default) on a schedule of num_timesteps: the length of its `timesteps`. Heun
    counts its 2nd-order calls (2 steps - 1); "ddpm" runs all num_timesteps."""
    check_kind(kind)
    if kind == "ddpm":
        if steps not in (None, num_timesteps):
            raise ValueError(f"the ancestral sampler runs all {num_timesteps} trained steps, got steps={steps}")
        return num_timesteps
    steps = DEFAULT_STEPS[kind] if steps is None else int(steps)
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in 1..{num_timesteps} (the trained schedule), got {steps}")
    return 2 * steps - 1 if kind == "heun" else steps


def tag(name: str, steps: int | None = None, eta: float = 0.0) -> str:
    """A path-safe tag of a sampler setting; `steps` None is "full" (the sampler's default)."""
    if name == BASELINE:
        return BASELINE
    check_kind(name)
    return f"{name}-{'full' if steps is None else int(steps)}" + (f"-eta{eta:g}" if eta else "")


def sampler_name(marker: dict) -> str | None:
    """The sampler of a chunk marker (or any dict with sampler and eta) as metrics rows name it:
    "ddim", or "ddim-eta1" when eta > 0, so that DDIM runs differing only in eta stay apart in
    every table and figure."""
    name, eta = marker.get("sampler"), marker.get("eta") or 0
    return f"{name}-eta{eta:g}" if name == "ddim" and eta else name


def label(name: str, steps) -> str:
    """A metrics row's sampler and steps as tables and figures print them: "ddim-50",
    "ddpm-full" (steps missing: the full schedule); the copy baseline has no steps."""
    if name == BASELINE:
        return "nearest view copied (baseline)"
    return f"{name}-{'full' if steps is None or steps != steps else int(steps)}"  # NaN != NaN


def parse_tag(text: str) -> tuple[str, int | None, float]:
    """Inverse of `tag`: (name, steps or None, eta)."""
    if text == BASELINE:
        return BASELINE, None, 0.0
    match = _TAG.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a sampler tag ({TAG_PATTERN})")
    steps = None if match["steps"] == "full" else int(match["steps"])
    return match["name"], steps, float(match["eta"] or 0.0)
