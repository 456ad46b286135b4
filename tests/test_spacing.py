"""Where a sampler's steps sit on the trained schedule (`spaced_timesteps`: linspace, trailing,
karras, lambda) and how a spacing is named in tags, metrics names and the samplers' factory."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from viewfusion.model.diffusion import DEFAULT_SPACING, SAMPLER_KINDS, SPACINGS, Schedule, spaced_timesteps
from viewfusion.model.samplers import SOLVER_KINDS as SOLVERS
from viewfusion.model.solvers import make_sampler_for

T = 2000
F64 = {"dtype": torch.float64}


@pytest.fixture(scope="module")
def buffers():
    return Schedule.make().buffers(torch.float64)  # the paper's schedule, in float64


def test_spaced_timesteps_closed_forms():
    assert spaced_timesteps(T, 10, "trailing").tolist() == list(range(1999, 0, -200))
    assert spaced_timesteps(T, 3, "trailing").tolist() == [1999, 1332, 666]  # round(2000 k / 3) - 1
    assert spaced_timesteps(T, 1, "trailing").tolist() == [1999]
    assert spaced_timesteps(T, 10).tolist() == [1999, 1777, 1555, 1333, 1111, 888, 666, 444, 222, 0]
    for spacing in ("linspace", "trailing"):
        assert spaced_timesteps(T, T, spacing).tolist() == list(range(T - 1, -1, -1))
        for n in (2, 3, 7, 50, 333, 1999):
            ts = spaced_timesteps(T, n, spacing)
            assert len(ts) == n and ts[0] == T - 1 and bool((ts[1:] < ts[:-1]).all()) and ts[-1] >= 0
    with pytest.raises(ValueError, match="spacing"):
        spaced_timesteps(T, 10, "leading")
    with pytest.raises(ValueError, match="steps"):
        spaced_timesteps(T, 0)


def test_sampler_tags_round_trip_and_name_a_spacing_only_when_it_is_not_the_default():
    from viewfusion.model import samplers

    cases = {("ddim", 50, 0.0, None): "ddim-50", ("ddim", 10, 1.0, "lambda"): "ddim-10-eta1-lambda",
             ("ddim", 10, 0.0, "linspace"): "ddim-10", ("dpmpp-2m-sde", 20, 0.0, "karras"): "dpmpp-2m-sde-20-karras",
             ("unipc", 5, 0.0, "trailing"): "unipc-5", ("euler", 5, 0.0, "linspace"): "euler-5-linspace",
             ("ddpm", None, 0.0, None): "ddpm-full", ("nearest", None, 0.0, None): "nearest"}
    for (name, steps, eta, spacing), tag in cases.items():
        assert samplers.tag(name, steps, eta, spacing) == tag
        assert samplers.tag_of({"name": name, "steps": steps, "eta": eta, "spacing": spacing}) == tag
        assert re.fullmatch(samplers.TAG_PATTERN, tag)
        back = samplers.parse_tag(tag)
        assert samplers.tag(*back) == tag and back[:3] == (name, steps, eta)
        marker = {"sampler": name, "eta": eta, "spacing": spacing}
        assert samplers.sampler_name(marker).endswith(f"-{spacing}") == (tag.endswith(f"-{spacing}"))
    assert samplers.sampler_name({"sampler": "ddim", "eta": 1.0, "spacing": "karras"}) == "ddim-eta1-karras"
    assert samplers.sampler_name({"sampler": "ddim", "eta": 1.0, "spacing": "linspace"}) == "ddim-eta1"
    for text, canonical in (("ddim-10-linspace", "ddim-10"), ("ddim-10-eta0", "ddim-10"),
                            ("ddim-10-eta1.0-lambda", "ddim-10-eta1-lambda"), ("unipc-5-trailing", "unipc-5")):
        assert re.fullmatch(samplers.TAG_PATTERN, text)  # a path Snakemake matches, refused when parsed
        with pytest.raises(ValueError, match="use that tag"):
            samplers.parse_tag(text)
        assert samplers.tag(*samplers.parse_tag(canonical)) == canonical
    for name, spacing in (("ddpm", "lambda"), ("nearest", "karras"), ("ddim", "leading")):
        with pytest.raises(ValueError, match="spacing"):
            samplers.tag(name, None, 0.0, spacing)
    assert set(samplers.DEFAULT_SPACING) == set(SAMPLER_KINDS) - {"ddpm"}


@pytest.mark.parametrize("spacing", ["karras", "lambda"])
def test_karras_and_lambda_grids_are_the_nearest_timesteps_to_their_noise_levels(buffers, spacing):
    """Every level of EDM eq. 5 (rho 7) or of an even log-SNR grid, from s(T-1) to s(0), goes to the
    trained timestep nearest in log s, as long as those are distinct; always distinct and in range."""
    gammas = buffers["gammas"]
    log_s = 0.5 * ((1 - gammas) / gammas).log()
    for n in (2, 5, 10, 20):
        frac = torch.linspace(0, 1, n, **F64)
        if spacing == "karras":  # (s_max^(1/7) + frac (s_min^(1/7) - s_max^(1/7)))^7
            s_max, s_min = float(log_s[-1].exp()), float(log_s[0].exp())
            levels = ((s_max ** (1 / 7) + frac * (s_min ** (1 / 7) - s_max ** (1 / 7))) ** 7).log()
        else:
            levels = log_s[-1] + frac * (log_s[0] - log_s[-1])
        want = [int((log_s - level).abs().argmin()) for level in levels]
        assert spaced_timesteps(T, n, spacing, gammas).tolist() == want
    # The grids of the paper schedule as models store it (float32 buffers; t = 353/354 is a near tie)
    paper = Schedule.make().buffers(torch.float32)["gammas"]
    assert spaced_timesteps(T, 10, "karras", paper).tolist() == [1999, 1862, 1697, 1491, 1220, 834, 354, 80, 10, 0]
    assert spaced_timesteps(T, 5, "lambda", paper).tolist() == [1999, 1277, 237, 12, 0]
    for n in (1, 50, 333, 1999, T):  # many levels round onto the few timesteps of low noise
        ts = spaced_timesteps(T, n, spacing, gammas)
        assert len(ts) == n and ts[0] == T - 1 and bool((ts[1:] < ts[:-1]).all()) and ts[-1] >= 0
    assert spaced_timesteps(T, T, spacing, gammas).tolist() == list(range(T - 1, -1, -1))
    with pytest.raises(ValueError, match="gammas"):
        spaced_timesteps(T, 10, spacing)
    # A stored table with gamma = 1 at t = 0 (s = 0): the grid spans the finite levels, t = 1 up.
    noise_free = gammas.clone()
    noise_free[0] = 1.0
    grid = spaced_timesteps(T, 10, spacing, noise_free).tolist()
    assert grid[0] == T - 1 and grid[1] > T // 2 and grid[-1] == 1 and grid == sorted(set(grid), reverse=True)


def test_every_sampler_but_the_ancestral_takes_a_spacing(buffers):
    for kind in ("ddim", *SOLVERS):
        for spacing in ("linspace", "trailing", "karras", "lambda"):
            grid = spaced_timesteps(T, 6, spacing, buffers["gammas"]).tolist()
            sampler = make_sampler_for(kind, buffers, steps=6, spacing=spacing)
            assert (sampler.timesteps.tolist() if kind == "ddim" else sampler.grid) == grid
        default = make_sampler_for(kind, buffers, steps=6)
        named = make_sampler_for(kind, buffers, steps=6, spacing=DEFAULT_SPACING[kind])
        assert default.timesteps.tolist() == named.timesteps.tolist()
    with pytest.raises(ValueError, match="spacing"):
        make_sampler_for("ddpm", buffers, spacing="karras")
    with pytest.raises(ValueError, match="spacing"):
        make_sampler_for("unipc", buffers, steps=6, spacing="leading")


def test_every_spacing_is_diffusers_grid_on_the_paper_schedule():
    """Golden file of diffusers 0.42.1's timesteps (tools/diffusers_timesteps.py): DDIMScheduler's
    linspace / trailing and DPMSolverMultistepScheduler's use_karras_sigmas / use_lu_lambdas."""
    golden = json.loads((Path(__file__).parent / "reference/diffusers_timesteps.json").read_text())
    gammas = Schedule.make().buffers(torch.float32)["gammas"]  # as a model stores them
    assert {name.rsplit("-", 1)[0] for name in golden["timesteps"]} == set(SPACINGS)
    for name, want in golden["timesteps"].items():
        spacing, steps = name.rsplit("-", 1)
        assert spaced_timesteps(T, int(steps), spacing, gammas).tolist() == want, name
