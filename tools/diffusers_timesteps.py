"""Writes diffusers' sampling timesteps on the paper schedule: the golden file of every spacing.

    pip install --target /tmp/difflib diffusers==0.42.1      # not a dependency of viewfusion
    PYTHONPATH=/tmp/difflib python tools/diffusers_timesteps.py --out tests/reference/diffusers_timesteps.json

For each of viewfusion's spacings the scheduler configuration that means the same grid:
linspace and trailing are DDIMScheduler's `timestep_spacing`, karras and lambda are
DPMSolverMultistepScheduler's `use_karras_sigmas` / `use_lu_lambdas`, all with the paper's betas
as `trained_betas` (from the float32 gammas a model stores). tests/test_spacing.py checks
`viewfusion.model.diffusion.spaced_timesteps` against the file, so CI needs no diffusers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from viewfusion.fsutil import atomic_write_json
from viewfusion.model.diffusion import Schedule

STEPS = (5, 10, 20)
CONFIGS = {
    "linspace": ("DDIMScheduler", {"timestep_spacing": "linspace"}),
    "trailing": ("DDIMScheduler", {"timestep_spacing": "trailing"}),
    "karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "lambda": ("DPMSolverMultistepScheduler", {"use_lu_lambdas": True}),
}


def paper_betas() -> torch.Tensor:
    """The betas of the paper schedule as the model's float32 gammas imply them (in float64)."""
    gammas = Schedule.make().buffers(torch.float32)["gammas"].double()
    return 1 - gammas / torch.cat([torch.ones(1, dtype=torch.float64), gammas[:-1]])


def main() -> None:
    import diffusers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    betas = paper_betas()
    grids = {}
    for spacing, (name, options) in CONFIGS.items():
        for steps in STEPS:
            scheduler = getattr(diffusers, name)(num_train_timesteps=len(betas), trained_betas=betas.numpy(), **options)
            scheduler.set_timesteps(steps)
            grids[f"{spacing}-{steps}"] = [int(t) for t in scheduler.timesteps]
    atomic_write_json(args.out, {"diffusers": diffusers.__version__, "schedule": "config/experiments/paper.yaml",
                                 "configs": {k: [n, o] for k, (n, o) in CONFIGS.items()}, "timesteps": grids})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
