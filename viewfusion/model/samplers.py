"""Sampler names, default steps, U-Net cost and path tags: one torch-free owner that the
samplers (viewfusion.model.diffusion), the CLI, the workflow (Snakefile wildcards, schema check), the
markers and the tables ask.

    tag(name, steps, eta, spacing) -> "ddim-50", "ddim-50-eta1", "ddpm-full", "dpmpp-2m-10",
                                      "ddim-10-eta1-lambda" (a spacing not the sampler's default), "nearest"
    parse_tag(tag)         -> (name, steps | None, eta, spacing | None)   (inverse of tag)
    spacing_of(name, spacing) -> the spacing a sampler runs with (None: its default)
    cli_flags(name, steps, eta, spacing) -> "--sampler ddim --steps 10 --eta 1 --spacing lambda"
    TAG_PATTERN            the regular expression of every tag (a Snakemake wildcard constraint)
    unet_calls(name, steps, num_timesteps) -> U-Net calls per target and conditioning view
    sampler_name(marker)   -> the name a chunk marker's setting has in metrics rows: "ddim-eta1",
                              "ddim-eta1-lambda"
    label(name, steps)     -> how tables and figures print a setting: "ddim-eta1-50", "ddpm-full"
    SamplerSpec(name, steps, eta, spacing)  one setting, as sampling and its callers pass it
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Model samplers: the paper's ancestral sampler, DDIM and the few-step solvers (viewfusion.model.solvers).
SOLVER_KINDS = ("dpmpp-2m", "dpmpp-2m-sde", "unipc", "euler", "heun")
SAMPLER_KINDS = ("ddpm", "ddim", *SOLVER_KINDS)
BASELINE = "nearest"  # the copy baseline: the conditioning view nearest the target, no network
ALL_SAMPLERS = (*SAMPLER_KINDS, BASELINE)
# Steps when none are given ("ddpm" always runs the whole trained schedule).
DEFAULT_STEPS = {"ddim": 50, "dpmpp-2m": 20, "dpmpp-2m-sde": 20, "unipc": 20, "euler": 20, "heun": 20}
# Where the steps sit on the trained schedule (viewfusion.model.diffusion.spaced_timesteps):
# "linspace" even in t down to 0 (DDIM's published spacing), "trailing" even in t down to T/steps - 1
# (Lin et al. 2024), "karras" even in sigma^(1/7) (Karras et al. 2022 eq. 5), "lambda" even in
# log-SNR (Lu et al. 2022). The ancestral sampler runs every step and has none.
SPACINGS = ("linspace", "trailing", "karras", "lambda")
# Each sampler's spacing when none is given. Changing one changes what a tag without a spacing
# means: bump viewfusion.evaluate.provenance.FORMAT with it, so old images are regenerated, not relabelled.
DEFAULT_SPACING = {"ddim": "linspace", **{kind: "trailing" for kind in SOLVER_KINDS}}

_NAMES = "|".join(re.escape(k) for k in sorted(SAMPLER_KINDS, key=len, reverse=True))
_SPACES = "|".join(SPACINGS)
TAG_PATTERN = rf"{BASELINE}|(?:{_NAMES})-(?:full|[0-9]+)(?:-eta[0-9.]+)?(?:-(?:{_SPACES}))?"
_TAG = re.compile(rf"(?P<name>{_NAMES})-(?P<steps>full|[0-9]+)(?:-eta(?P<eta>[0-9.]+))?(?:-(?P<spacing>{_SPACES}))?")


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


def spacing_of(name: str, spacing: str | None = None) -> str | None:
    """The spacing sampler `name` runs with: `spacing`, or its default when None; None for the
    ancestral sampler and the copy baseline, which take none (a ValueError if one is given)."""
    if name == BASELINE or name == "ddpm":
        if spacing is not None:
            raise ValueError(f"sampler {name!r} takes no spacing (it runs every trained step or none); "
                             f"got spacing={spacing!r}")
        return None
    check_kind(name)
    if spacing is not None and spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}")
    return spacing or DEFAULT_SPACING[name]


def chosen_spacing(name: str, spacing: str | None) -> str | None:
    """`spacing` if it is not sampler `name`'s default, else None: what tags, fingerprints and
    metrics names carry, so that those made before spacings were a setting keep their meaning."""
    spacing = spacing_of(name, spacing)
    return None if spacing is None or spacing == DEFAULT_SPACING[name] else spacing


def _suffix(name: str, spacing: str | None) -> str:
    chosen = chosen_spacing(name, spacing)
    return f"-{chosen}" if chosen else ""


def cli_flags(name: str, steps: int | None = None, eta: float = 0.0, spacing: str | None = None) -> str:
    """A setting as `viewfusion sample` flags: "--sampler ddim --steps 10 --eta 1 --spacing lambda"
    (a flag only where its value is given)."""
    return (f"--sampler {name}" + (f" --steps {steps}" if steps else "") + (f" --eta {eta:g}" if eta else "")
            + (f" --spacing {spacing}" if spacing else ""))


def tag(name: str, steps: int | None = None, eta: float = 0.0, spacing: str | None = None) -> str:
    """A path-safe tag of a sampler setting; `steps` None is "full" (the sampler's default)."""
    if name == BASELINE:
        spacing_of(name, spacing)
        return BASELINE
    check_kind(name)
    return (f"{name}-{'full' if steps is None else int(steps)}" + (f"-eta{eta:g}" if eta else "")
            + _suffix(name, spacing))


def tag_of(spec: dict) -> str:
    """The tag of a config's sampler entry {name, steps, eta, spacing} (the workflow's paths, plan)."""
    return tag(spec["name"], spec.get("steps"), spec.get("eta") or 0.0, spec.get("spacing"))


def sampler_name(marker: dict) -> str | None:
    """The sampler of a chunk marker (or any dict with sampler, eta and spacing) as metrics rows
    name it: "ddim", "ddim-eta1" when eta > 0, "ddim-eta1-lambda" with a spacing not the
    sampler's default, so that runs differing only in eta or spacing stay apart in every table
    and figure."""
    name, eta = marker.get("sampler"), marker.get("eta") or 0
    full = f"{name}-eta{eta:g}" if name == "ddim" and eta else name
    return full + _suffix(name, marker.get("spacing")) if name in SAMPLER_KINDS else full


def label(name: str, steps) -> str:
    """A metrics row's sampler and steps as tables and figures print them: "ddim-50",
    "ddpm-full" (steps missing: the full schedule); the copy baseline has no steps."""
    if name == BASELINE:
        return "nearest view copied (baseline)"
    return f"{name}-{'full' if steps is None or steps != steps else int(steps)}"  # NaN != NaN


def parse_tag(text: str) -> tuple[str, int | None, float, str | None]:
    """Inverse of `tag`: (name, steps or None, eta, spacing or None: the sampler's default)."""
    if text == BASELINE:
        return BASELINE, None, 0.0, None
    match = _TAG.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a sampler tag ({TAG_PATTERN})")
    steps = None if match["steps"] == "full" else int(match["steps"])
    parsed = match["name"], steps, float(match["eta"] or 0.0), match["spacing"]
    canonical = tag(*parsed)
    if canonical != text:  # one folder per setting: "ddim-10-linspace" and "ddim-10-eta0" are "ddim-10"
        raise ValueError(f"{text!r} names the setting of {canonical!r}; use that tag")
    return parsed


@dataclass(frozen=True)
class SamplerSpec:
    name: str  # "ddpm" (the paper's ancestral sampler), "ddim" or "nearest" (the copy baseline)
    steps: int | None  # None: the full training schedule (ddpm-2000 for the paper), DDIM 50
    eta: float = 0.0
    spacing: str | None = None  # SPACINGS; None: the sampler's default

    def flags(self) -> str:
        return cli_flags(self.name, self.steps, self.eta, self.spacing)
