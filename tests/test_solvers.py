"""Few-step solvers (issue 19) against closed forms, each other and the model's sampling loop.

Closed forms: for data that is a single point every solver is exact; for Gaussian data
x0 ~ N(mu, sd^2) the data prediction E[x0 | y_t] and the probability-flow ODE are analytic
(in x~ = y / alpha, s = sigma / alpha: x~(s) = mu + (x~_T - mu) sqrt(sd^2 + s^2) / sqrt(sd^2 + s_T^2)),
so each solver's global error, and its order of convergence, can be measured exactly.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from viewfusion.model.diffusion import DEFAULT_STEPS, SAMPLER_KINDS, DDIMSampler, Schedule, spaced_timesteps, unet_calls
from viewfusion.model.samplers import SOLVER_KINDS as SOLVERS
from viewfusion.model.solvers import DPMSolverPP, EulerSolver, HeunSolver, UniPC, make_sampler_for

pytestmark = pytest.mark.usefixtures("one_thread")

T = 2000
ODE_SOLVERS = {"dpmpp-2m": DPMSolverPP, "unipc": UniPC, "euler": EulerSolver, "heun": HeunSolver}
F64 = {"dtype": torch.float64}


@pytest.fixture(scope="module")
def buffers():
    return Schedule.make().buffers(torch.float64)  # the paper's schedule, in float64


class Gaussian:
    """Data x0 ~ N(mu, sd^2) per element under the schedule `gammas` (t = -1: gamma = 1)."""

    def __init__(self, gammas, mu=0.3, sd=0.5):
        self.gammas, self.mu, self.sd = gammas, mu, sd

    def _a(self, t):
        return 1.0 if t < 0 else float(self.gammas[t])

    def _s(self, t):  # Karras' sigma = sqrt((1 - gamma) / gamma)
        a = self._a(t)
        return math.sqrt((1 - a) / a)

    def denoise(self, y, t):
        """E[x0 | y_t]: mu + alpha sd^2 / (alpha^2 sd^2 + sigma^2) (y - alpha mu)."""
        a = self._a(t)
        return self.mu + math.sqrt(a) * self.sd**2 / (a * self.sd**2 + 1 - a) * (y - math.sqrt(a) * self.mu)

    def eps(self, y, t):
        a = self._a(t)
        return (y - math.sqrt(a) * self.denoise(y, t)) / math.sqrt(1 - a)

    def flow(self, y, t_from, t_to):
        """The exact probability-flow ODE solution at t_to from y at t_from (VP samples)."""
        x = y / math.sqrt(self._a(t_from))
        x = self.mu + (x - self.mu) * math.hypot(self.sd, self._s(t_to)) / math.hypot(self.sd, self._s(t_from))
        return x * math.sqrt(self._a(t_to))


def run(sampler, eps_fn, y, *, seed=0):
    """The sampling loop of ViewFusion.iter_sample with eps_fn(y, t); returns the StepOutputs."""
    gen = torch.Generator().manual_seed(seed)
    outs = []
    for t in sampler.timesteps.tolist():
        noise = torch.randn(y.shape, generator=gen, dtype=y.dtype) if sampler.uses_noise(t) else None
        outs.append(sampler.step(eps_fn(y, t), t, y, noise=noise))
        y = outs[-1].prev_sample
    return outs


def fake_eps(y, t):
    """A smooth, nonlinear stand-in for the composed noise (large enough that clamps bite)."""
    return 2.5 * torch.tanh(y) + math.sin(t / 100)


# ------------------------------------------------------------------------- names and costs


def test_sampler_names_and_costs_have_one_owner(buffers):
    from viewfusion.model import diffusion, samplers

    # The torch-free owner (CLI, workflow, tables) and what the samplers use are the same objects.
    assert diffusion.SAMPLER_KINDS is samplers.SAMPLER_KINDS and diffusion.unet_calls is samplers.unet_calls
    assert SAMPLER_KINDS == ("ddpm", "ddim", "dpmpp-2m", "dpmpp-2m-sde", "unipc", "euler", "heun")
    assert set(DEFAULT_STEPS) == set(SAMPLER_KINDS) - {"ddpm"}
    for kind in SAMPLER_KINDS:
        for steps in ([None] if kind == "ddpm" else [None, 1, 2, 7, 20]):
            sampler = make_sampler_for(kind, buffers, steps=steps)
            # The cost the tables quote is the number of U-Net evaluations the loop makes.
            assert unet_calls(kind, steps, T) == len(sampler.timesteps)
    assert unet_calls("ddpm", None, T) == unet_calls("ddpm", T, T) == T
    assert unet_calls("ddim", None, T) == 50 and unet_calls("unipc", None, T) == 20
    assert [unet_calls("heun", n, T) for n in (1, 2, 10)] == [1, 3, 19]  # 2nd-order calls counted
    assert all(unet_calls(kind, 10, T) == 10 for kind in ("ddim", "dpmpp-2m", "dpmpp-2m-sde", "unipc", "euler"))
    with pytest.raises(ValueError, match="dpmpp-2m, dpmpp-2m-sde"):
        unet_calls("plms", 10, T)
    with pytest.raises(ValueError, match="steps"):
        unet_calls("euler", 0, T)
    with pytest.raises(ValueError, match="steps"):
        unet_calls("heun", T + 1, T)
    with pytest.raises(ValueError, match="ancestral"):
        unet_calls("ddpm", 10, T)


def test_make_sampler_for_checks_its_arguments(buffers):
    with pytest.raises(ValueError, match="sampler must be one of"):
        make_sampler_for("k-lms", buffers)
    for kind in SOLVERS:
        with pytest.raises(ValueError, match="eta"):
            make_sampler_for(kind, buffers, steps=5, eta=1.0)
    assert make_sampler_for("ddim", buffers, steps=5, eta=1.0).eta == 1.0
    with pytest.raises(ValueError, match="clamp"):
        make_sampler_for("unipc", buffers, steps=5, clamp=(1.0, 0.0))


def test_every_solver_uses_the_trailing_grid_and_heun_repeats_its_interior_points(buffers):
    grid = spaced_timesteps(T, 6, "trailing").tolist()
    for kind in SOLVERS:
        sampler = make_sampler_for(kind, buffers, steps=6)
        assert sampler.grid == grid
        want = [grid[0], *(t for t in grid[1:] for _ in range(2))] if kind == "heun" else grid
        assert sampler.timesteps.tolist() == want
        for t in set(want):
            torch.testing.assert_close(sampler.noise_level(t), buffers["gammas"][t])
    # DDIM keeps its published spacing (the paper comparison ran on it).
    assert make_sampler_for("ddim", buffers, steps=6).timesteps.tolist() == spaced_timesteps(T, 6).tolist()


# ------------------------------------------------------------------ identities with DDIM


@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
@pytest.mark.parametrize("clamp", [(-1.0, 1.0), (0.0, 1.0), None])
def test_euler_is_the_ddim_eta0_step(buffers, spacing, clamp):
    """Euler in x~ = y / sqrt(gamma) against s = sqrt((1 - gamma) / gamma) is DDIM eta=0 (the
    same discretisation of the same ODE): equal at every step, clamped x0 included."""
    gammas = buffers["gammas"]
    y = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1), **F64)
    for steps in (1, 2, 10, 37):
        euler = run(EulerSolver(gammas, steps=steps, clamp=clamp, spacing=spacing), fake_eps, y)
        ddim = run(DDIMSampler(gammas, steps=steps, eta=0.0, clamp=clamp, spacing=spacing), fake_eps, y)
        for a, b in zip(euler, ddim, strict=True):
            torch.testing.assert_close(a.prev_sample, b.prev_sample, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(a.pred_original_sample, b.pred_original_sample, rtol=1e-12, atol=1e-12)
    # In float32 (the model's dtype) the two differ by rounding only.
    y32 = y.float()
    euler = run(EulerSolver(gammas.float(), steps=10, clamp=clamp, spacing=spacing), fake_eps, y32)
    ddim = run(DDIMSampler(gammas.float(), steps=10, clamp=clamp, spacing=spacing), fake_eps, y32)
    torch.testing.assert_close(euler[-1].prev_sample, ddim[-1].prev_sample, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("kind", ["dpmpp-2m", "unipc", "euler", "heun"])
@pytest.mark.parametrize("clamp", [(-1.0, 1.0), (0.0, 1.0)])
def test_first_step_is_the_ddim_step(buffers, kind, clamp):
    """DPM-Solver++ and UniPC start at first order (DPM-Solver++(1) = DDIM, Lu et al. 2022b
    Sec. 4); Euler is DDIM; Heun's first stage is Euler's proposal."""
    gammas = buffers["gammas"]
    gen = torch.Generator().manual_seed(2)
    y, eps = torch.randn(2, 3, 4, 4, generator=gen, **F64), 3 * torch.randn(2, 3, 4, 4, generator=gen, **F64)
    solver = make_sampler_for(kind, buffers, steps=8, clamp=clamp)
    ddim = DDIMSampler(gammas, steps=8, eta=0.0, clamp=clamp, spacing="trailing")
    t = solver.timesteps[0].item()
    got, want = solver.step(eps, t, y), ddim.step(eps, t, y)
    torch.testing.assert_close(got.prev_sample, want.prev_sample, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.pred_original_sample, want.pred_original_sample, rtol=0, atol=0)
    assert got.pred_original_sample.min() >= clamp[0] and got.pred_original_sample.max() <= clamp[1]


def test_sde_first_step_is_the_ddim_eta1_step(buffers):
    """SDE-DPM-Solver++ at first order, x_n = sigma_n/sigma_i e^{-h} x_i + alpha_n (1 - e^{-2h}) x0
    + sigma_n sqrt(1 - e^{-2h}) z, is DDIM eta=1 (the respaced ancestral step), same noise."""
    gammas = buffers["gammas"]
    gen = torch.Generator().manual_seed(3)
    y, eps, z = (torch.randn(2, 3, 4, 4, generator=gen, **F64) for _ in range(3))
    for steps in (2, 8, T):
        sde = DPMSolverPP(gammas, steps=steps, sde=True)
        ddim = DDIMSampler(gammas, steps=steps, eta=1.0, spacing="trailing")
        t = sde.timesteps[0].item()
        assert sde.uses_noise(t) and ddim.uses_noise(t)
        torch.testing.assert_close(sde.step(eps, t, y, noise=z).prev_sample, ddim.step(eps, t, y, noise=z).prev_sample,
                                   rtol=1e-10, atol=1e-10)
    last = DPMSolverPP(gammas, steps=2, sde=True).grid[-1]
    assert not DPMSolverPP(gammas, steps=2, sde=True).uses_noise(last)
    with pytest.raises(ValueError, match="noise"):
        DPMSolverPP(gammas, steps=2, sde=True).step(eps, T - 1, y)


def test_unipc_predictor_is_dpm_solver_pp_2m(buffers):
    """For B(h) = e^{-h} - 1 ("bh2") UniP-2 is the DPM-Solver++(2M) update: with the same
    history, the predictor's output is DPM-Solver++'s."""
    gammas = buffers["gammas"]
    gen = torch.Generator().manual_seed(4)
    y0, y1, e0, e1 = (torch.randn(1, 3, 4, 4, generator=gen, **F64) for _ in range(4))
    uni, dpm = UniPC(gammas, steps=6, clamp=None), DPMSolverPP(gammas, steps=6, clamp=None)
    t0, t1 = uni.grid[:2]
    uni.step(e0, t0, y0)
    dpm.step(e0, t0, y0)
    # Step 2: UniPC corrects y1 first; feed DPM-Solver++ the corrected sample UniPC predicts from.
    x0_1 = (y1 - math.sqrt(1 - gammas[t1].item()) * e1) / math.sqrt(gammas[t1].item())
    corrected = uni._corrector(x0_1, 1)
    got = uni.step(e1, t1, y1).prev_sample
    eps_at_corrected = (corrected - math.sqrt(gammas[t1].item()) * x0_1) / math.sqrt(1 - gammas[t1].item())
    torch.testing.assert_close(got, dpm.step(eps_at_corrected, t1, corrected).prev_sample, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("kind", ["dpmpp-2m", "unipc", "euler", "heun"])
def test_solvers_are_exact_for_a_single_data_point(buffers, kind):
    """Data = one point c: x0-hat = c everywhere, the ODE is y(t) = sqrt(gamma_t) c + sqrt(1 - gamma_t) eps
    with eps fixed, and every solver lands on it at every grid point (corrections vanish)."""
    gammas = buffers["gammas"]
    gen = torch.Generator().manual_seed(5)
    c = torch.rand(1, 3, 4, 4, generator=gen, **F64)
    eps0 = torch.randn(1, 3, 4, 4, generator=gen, **F64)
    sampler = make_sampler_for(kind, buffers, steps=7, clamp=None)
    y = gammas[T - 1].sqrt() * c + (1 - gammas[T - 1]).sqrt() * eps0

    def exact_eps(y, t):
        return (y - gammas[t].sqrt() * c) / (1 - gammas[t]).sqrt()

    outs = run(sampler, exact_eps, y)
    stepped_to = [*sampler.timesteps.tolist()[1:], -1]  # each output lives at the next evaluation's t
    for out, t in zip(outs, stepped_to, strict=True):
        a = 1.0 if t < 0 else gammas[t]
        want = math.sqrt(a) * c + math.sqrt(1 - a) * eps0
        torch.testing.assert_close(out.prev_sample, want, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out.pred_original_sample, c, rtol=1e-10, atol=1e-10)


def lambda_linear_gammas(n=32000, lam_max=4.0):
    """A schedule uniform in lambda = log(alpha / sigma) from lam_max (t = 0) to -lam_max, so that
    evenly spaced timesteps refine every step alike and global errors scale as h^order."""
    return torch.sigmoid(2 * torch.linspace(lam_max, -lam_max, n, **F64))


def gaussian_error(kind, gammas, steps, *, spacing="trailing", y_T=None):
    """Max |solver - exact| on Gaussian data; the exact value is the ODE solution at the grid's last
    point mapped by the same final step (x0-hat there), so only the integration error counts."""
    data = Gaussian(gammas)
    sampler = ODE_SOLVERS[kind](gammas, steps=steps, clamp=None, spacing=spacing)
    if y_T is None:
        y_T = torch.randn(2000, generator=torch.Generator().manual_seed(0), **F64)
    last = sampler.grid[-1]
    want = data.denoise(data.flow(y_T, sampler.grid[0], last), last)
    return (run(sampler, data.eps, y_T)[-1].prev_sample - want).abs().max().item()


@pytest.mark.parametrize("kind, order", [("euler", 1.0), ("dpmpp-2m", 2.0), ("heun", 2.0), ("unipc", 3.0)])
def test_convergence_orders_on_gaussian_data(kind, order):
    """Observed orders: Euler 1, DPM-Solver++(2M) 2, Heun 2, UniPC-2 with its corrector 3
    (Zhao et al. 2023 Thm. 3.3: UniC raises the order by one)."""
    gammas = lambda_linear_gammas()
    errors = [gaussian_error(kind, gammas, n) for n in (20, 40, 80)]
    observed = [math.log2(a / b) for a, b in itertools.pairwise(errors)]
    assert all(abs(p - order) < 0.2 for p in observed), (kind, errors, observed)


def test_gaussian_accuracy_on_the_paper_schedule(buffers):
    """Distance to the exact ODE endpoint (sigma = 0) from y_T on the paper's schedule: the
    second-order solvers beat Euler (= DDIM eta=0) at 10 and 20 steps, and the trailing spacing
    is what lets the multistep ones do so (docs/NOTES.md has the table)."""
    gammas = buffers["gammas"]
    data = Gaussian(gammas)
    y_T = torch.randn(4000, generator=torch.Generator().manual_seed(0), **F64)
    want = data.flow(y_T, T - 1, -1)

    def error(kind, steps, spacing="trailing"):
        sampler = ODE_SOLVERS[kind](gammas, steps=steps, clamp=None, spacing=spacing)
        return (run(sampler, data.eps, y_T)[-1].prev_sample - want).pow(2).mean().sqrt().item()

    for steps in (10, 20):
        euler = error("euler", steps)
        for kind in ("dpmpp-2m", "unipc", "heun"):
            assert error(kind, steps) < 0.75 * euler, (kind, steps)
        assert error("dpmpp-2m", steps) < 0.5 * error("dpmpp-2m", steps, "linspace")
    assert error("unipc", 50) < 0.003 and error("heun", 50) < 0.003 and error("dpmpp-2m", 50) < 0.005


def test_sde_solver_samples_the_gaussian(buffers):
    """SDE-DPM-Solver++(2M) at 20 steps draws N(mu, sd^2) (std within 4%), where DDIM eta=1 at
    20 steps is still far too narrow."""
    gammas = buffers["gammas"]
    data = Gaussian(gammas)
    y_T = torch.randn(100_000, generator=torch.Generator().manual_seed(6), **F64)
    out = run(DPMSolverPP(gammas, steps=20, clamp=None, sde=True), data.eps, y_T, seed=7)[-1].prev_sample
    assert out.mean().item() == pytest.approx(data.mu, abs=0.01)
    assert out.std().item() == pytest.approx(data.sd, rel=0.04)
    ddim = run(DDIMSampler(gammas, steps=20, eta=1.0, clamp=None, spacing="trailing"), data.eps, y_T, seed=7)
    assert ddim[-1].prev_sample.std().item() < 0.85 * data.sd


# ----------------------------------------------------------------------- the step protocol


@pytest.mark.parametrize("kind", SOLVERS)
def test_last_step_returns_the_clamped_x0(buffers, kind):
    y = 3 * torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(8), **F64)
    outs = run(make_sampler_for(kind, buffers, steps=4, clamp=(0.0, 1.0)), fake_eps, y)
    assert torch.equal(outs[-1].prev_sample, outs[-1].pred_original_sample)
    for out in outs:
        assert out.pred_original_sample.min() >= 0.0 and out.pred_original_sample.max() <= 1.0
    free = run(make_sampler_for(kind, buffers, steps=4, clamp=None), fake_eps, y)
    assert free[-1].prev_sample.max() > 1.0 or free[-1].prev_sample.min() < 0.0  # the clamp did bite


@pytest.mark.parametrize("kind", SOLVERS)
def test_solvers_are_stepped_once_per_timestep_in_order(buffers, kind):
    sampler = make_sampler_for(kind, buffers, steps=3)
    y = torch.zeros(1, 3, 2, 2, **F64)
    ts = sampler.timesteps.tolist()
    with pytest.raises(ValueError, match="in order"):
        sampler.step(y, ts[1], y, noise=y)
    run(sampler, fake_eps, y)
    with pytest.raises(ValueError, match="new sampler"):
        sampler.step(y, ts[-1], y, noise=y)


def test_heun_second_stage_averages_the_slopes(buffers):
    """One Heun step by hand in Karras' variables (EDM Algorithm 1, lines 5-8)."""
    gammas = buffers["gammas"]
    heun = HeunSolver(gammas, steps=3, clamp=None)
    t0, t1 = heun.grid[:2]
    a0, a1 = gammas[t0].item(), gammas[t1].item()
    s0, s1 = math.sqrt((1 - a0) / a0), math.sqrt((1 - a1) / a1)
    gen = torch.Generator().manual_seed(9)
    y, e0, e1 = (torch.randn(1, 3, 4, 4, generator=gen, **F64) for _ in range(3))
    x = y / math.sqrt(a0)
    d0 = (x - (y - math.sqrt(1 - a0) * e0) / math.sqrt(a0)) / s0  # (x~ - D) / s
    proposal = heun.step(e0, t0, y).prev_sample
    torch.testing.assert_close(proposal, math.sqrt(a1) * (x + (s1 - s0) * d0))
    d1 = (proposal / math.sqrt(a1) - (proposal - math.sqrt(1 - a1) * e1) / math.sqrt(a1)) / s1
    got = heun.step(e1, t1, proposal).prev_sample
    torch.testing.assert_close(got, math.sqrt(a1) * (x + (s1 - s0) * (d0 + d1) / 2))
