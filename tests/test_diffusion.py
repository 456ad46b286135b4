"""Schedules against closed forms; DDPM / DDIM samplers against each other and an exact oracle."""

from __future__ import annotations

import math

import pytest
import torch

from viewfusion.model.diffusion import (
    BUFFER_NAMES,
    AncestralSampler,
    DDIMSampler,
    Schedule,
    add_noise,
    eps_from_v,
    make_beta_schedule,
    sample_continuous_gamma,
    spaced_timesteps,
    v_target,
)

T = 2000


@pytest.fixture(scope="module")
def schedule():
    return Schedule.make()  # the official train schedule: linear 1e-6 .. 1e-2, 2000 steps


def test_beta_schedules_closed_forms():
    linear = make_beta_schedule("linear", 5, 0.1, 0.5)
    torch.testing.assert_close(linear, torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float64))
    quad = make_beta_schedule("quad", 3, 0.01, 0.09)
    torch.testing.assert_close(quad, torch.tensor([0.01, 0.04, 0.09], dtype=torch.float64))
    warm = make_beta_schedule("warmup10", 100, 1e-4, 0.02)
    assert warm[0] == 1e-4 and warm[9] == pytest.approx(0.02) and bool((warm[10:] == 0.02).all())
    assert int((make_beta_schedule("warmup50", 100, 1e-4, 0.02) < 0.02 - 1e-12).sum()) == 49
    # Cosine: abar_t = f(t+1)/f(0), f(t) = cos^2((t/T + s)/(1 + s) * pi/2), where no beta is clipped.
    s, n = 8e-3, 1000
    abar = Schedule(make_beta_schedule("cosine", n)).alphas_cumprod
    def f(t):
        return math.cos((t / n + s) / (1 + s) * math.pi / 2) ** 2
    for t in (0, 10, 500, 900):
        assert abar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    with pytest.raises(ValueError, match="kind"):
        make_beta_schedule("sigmoid", 10)


def test_schedule_tensors_closed_forms(schedule):
    betas = schedule.betas
    assert schedule.num_timesteps == T and betas[0] == 1e-6 and betas[-1] == pytest.approx(1e-2)
    abar = schedule.alphas_cumprod
    torch.testing.assert_close(abar, torch.exp(torch.cumsum(torch.log1p(-betas), 0)), rtol=1e-12, atol=0)
    buf = schedule.buffers(torch.float64)
    assert list(buf) == list(BUFFER_NAMES)
    torch.testing.assert_close(buf["sqrt_recip_gammas"] * abar.sqrt(), torch.ones(T, dtype=torch.float64))
    torch.testing.assert_close(buf["sqrt_recipm1_gammas"] ** 2, (1 - abar) / abar)
    # Posterior q(x_{t-1} | x_t, x0) by the product of two Gaussians, independent of DDPM eq. 7.
    t = torch.arange(1, T)
    abar_prev, alpha, beta = abar[t - 1], 1 - betas[t], betas[t]
    precision = 1 / (1 - abar_prev) + alpha / beta
    torch.testing.assert_close(buf["posterior_mean_coef1"][t], abar_prev.sqrt() / (1 - abar_prev) / precision)
    torch.testing.assert_close(buf["posterior_mean_coef2"][t], alpha.sqrt() / beta / precision)
    torch.testing.assert_close(buf["posterior_log_variance_clipped"][t], -torch.log(precision))
    assert buf["posterior_log_variance_clipped"][0] == pytest.approx(math.log(1e-20))
    assert schedule.buffers()["gammas"].dtype == torch.float32


def test_schedule_rejects_bad_betas():
    with pytest.raises(ValueError, match="betas"):
        Schedule(torch.tensor([0.1, 1.0]))


def test_continuous_gamma_lies_between_neighbouring_steps(schedule):
    gammas = schedule.buffers()["gammas"]
    t, gamma = sample_continuous_gamma(gammas, 4096, generator=torch.Generator().manual_seed(0))
    assert int(t.min()) >= 1 and int(t.max()) <= T - 1
    assert bool((gamma <= gammas[t - 1]).all()) and bool((gamma >= gammas[t]).all())
    # U(gamma_t, gamma_{t-1}): the position inside the interval is uniform (mean 1/2).
    position = (gamma - gammas[t]) / (gammas[t - 1] - gammas[t])
    assert position.mean().item() == pytest.approx(0.5, abs=0.03)


def test_add_noise():
    y0, eps = torch.rand(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    out = add_noise(y0, eps, torch.tensor([1.0, 0.25]))
    torch.testing.assert_close(out[0], y0[0])
    torch.testing.assert_close(out[1], 0.5 * y0[1] + math.sqrt(0.75) * eps[1])


def test_v_prediction_round_trip():
    y0, eps, gamma = torch.rand(3, 3, 4, 4), torch.randn(3, 3, 4, 4), torch.tensor([0.999, 0.3, 4.5e-5])
    v = v_target(y0, eps, gamma)
    torch.testing.assert_close(v[0], math.sqrt(0.999) * eps[0] - math.sqrt(0.001) * y0[0])
    torch.testing.assert_close(eps_from_v(v, add_noise(y0, eps, gamma), gamma), eps, atol=1e-5, rtol=1e-5)


def _oracle_eps(x0):
    """The exact noise predictor for data that is the single point x0."""
    return lambda y_t, gamma: (y_t - gamma.sqrt() * x0) / (1 - gamma).sqrt()


def _run(sampler, x0, *, seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    eps_fn = _oracle_eps(x0)
    for t in sampler.timesteps.tolist():
        eps = eps_fn(y, sampler.noise_level(t).double())
        noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64) if sampler.uses_noise(t) else None
        y = sampler.step(eps, t, y, noise=noise).prev_sample
    return y


@pytest.mark.parametrize("steps", [1, 10, 50])
def test_ddim_with_an_exact_predictor_returns_the_data_point(schedule, steps):
    x0 = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    sampler = DDIMSampler(schedule.buffers(torch.float64)["gammas"], steps=steps, eta=0.0)
    torch.testing.assert_close(_run(sampler, x0), x0, atol=1e-6, rtol=0)


def test_ancestral_with_an_exact_predictor_returns_the_data_point(schedule):
    x0 = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    sampler = AncestralSampler(schedule.buffers(torch.float64))
    assert sampler.timesteps.tolist() == list(range(T - 1, -1, -1))
    torch.testing.assert_close(_run(sampler, x0), x0, atol=1e-6, rtol=0)


def test_ddim_eta0_is_deterministic(schedule):
    sampler = DDIMSampler(schedule.buffers()["gammas"], steps=20, eta=0.0)
    assert not any(sampler.uses_noise(t) for t in sampler.timesteps.tolist())
    x0 = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    eps = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    a = [sampler.step(eps, t, x0).prev_sample for t in sampler.timesteps.tolist()]
    b = [sampler.step(eps, t, x0).prev_sample for t in sampler.timesteps.tolist()]
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_ddim_timesteps(schedule):
    gammas = schedule.buffers()["gammas"]
    ts = DDIMSampler(gammas, steps=50).timesteps
    assert len(ts) == 50 and ts[0] == T - 1 and ts[-1] == 0 and bool((ts[1:] < ts[:-1]).all())
    assert DDIMSampler(gammas, steps=T).timesteps.tolist() == list(range(T - 1, -1, -1))
    for bad in (0, T + 1):
        with pytest.raises(ValueError, match="steps"):
            DDIMSampler(gammas, steps=bad)
    with pytest.raises(ValueError, match="eta"):
        DDIMSampler(gammas, eta=-0.5)


def test_ddim_spacing(schedule):
    """DDIM's published "linspace" spacing is the default; "trailing" (the few-step solvers')
    on request, ending at T/steps - 1 and still exact with an exact predictor."""
    gammas = schedule.buffers(torch.float64)["gammas"]
    assert DDIMSampler(gammas, steps=10).timesteps.tolist() == spaced_timesteps(T, 10, "linspace").tolist()
    trailing = DDIMSampler(gammas, steps=10, spacing="trailing")
    assert trailing.timesteps.tolist() == list(range(1999, 0, -200))
    x0 = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(_run(trailing, x0), x0, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="spacing"):
        DDIMSampler(gammas, steps=10, spacing="leading")


@pytest.mark.parametrize("t", [1999, 700, 3, 1])
def test_ddim_eta1_all_steps_is_the_ancestral_step(schedule, t):
    # With sigma^2 = the posterior variance, DDIM eq. 12 equals DDPM eq. 7 (clamp included).
    buffers = schedule.buffers(torch.float64)
    ddpm, ddim = AncestralSampler(buffers), DDIMSampler(buffers["gammas"], steps=T, eta=1.0)
    gen = torch.Generator().manual_seed(t)
    y_t, eps, z = (torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    eps = eps * 3  # large enough that the clamp of x0 bites at high noise
    expected = ddpm.step(eps, t, y_t, noise=z)
    got = ddim.step(eps, t, y_t, noise=z)
    torch.testing.assert_close(got.prev_sample, expected.prev_sample, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got.pred_original_sample, expected.pred_original_sample)
    assert ddim.sigma(t) ** 2 == pytest.approx(schedule.posterior_variance[t].item(), rel=1e-9)


def test_clamp_is_configurable(schedule):
    buffers = schedule.buffers(torch.float64)
    y_t, eps = torch.full((1, 3, 2, 2), 5.0, dtype=torch.float64), torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    _, _, x0_official = AncestralSampler(buffers).mean_variance(eps, y_t, 10)
    _, _, x0_data = AncestralSampler(buffers, clamp=(0.0, 1.0)).mean_variance(eps, y_t, 10)
    _, _, x0_free = AncestralSampler(buffers, clamp=None).mean_variance(eps, y_t, 10)
    assert x0_official.max() == 1.0 and x0_data.max() == 1.0 and x0_free.min() > 5.0
    y_t = -y_t
    assert AncestralSampler(buffers).mean_variance(eps, y_t, 10)[2].min() == -1.0
    assert AncestralSampler(buffers, clamp=(0.0, 1.0)).mean_variance(eps, y_t, 10)[2].min() == 0.0
    for bad in [(1.0, 0.0), (0.5, 0.5), (-math.inf, math.inf), (math.nan, 1.0)]:
        with pytest.raises(ValueError, match="clamp"):
            AncestralSampler(buffers, clamp=bad)
        with pytest.raises(ValueError, match="clamp"):
            DDIMSampler(buffers["gammas"], steps=2, clamp=bad)


def test_the_clamp_rule_has_one_owner():
    from viewfusion import config
    from viewfusion.model import diffusion

    assert diffusion.check_clamp is config.check_clamp  # what a config accepts, a sampler runs


def test_samplers_demand_noise_when_they_use_it(schedule):
    buffers = schedule.buffers()
    x = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match="noise"):
        AncestralSampler(buffers).step(x, 5, x)
    AncestralSampler(buffers).step(x, 0, x)  # the last step adds no noise
    with pytest.raises(ValueError, match="noise"):
        DDIMSampler(buffers["gammas"], steps=10, eta=0.5).step(x, T - 1, x)
