"""Noise schedules and samplers of ViewFusion, with a small diffusers-style interface.

Notation (as the official code): gamma_t = alpha-bar_t = prod_{s<=t} (1 - beta_s), t = 0..T-1.
Equation numbers refer to DDPM (Ho et al. 2020), SR3 (Saharia et al. 2021) and DDIM (Song et al.
2021). Images live in [0, 1]; the official sampler still clamps the predicted x0 to [-1, 1]
(the goldens use it), so the clamp range is a setting of every sampler.

* `Schedule`: betas and everything derived from them; `buffers()` gives the six tensors the
  official state dict stores, under their official names.
* Training: `sample_continuous_gamma` (SR3 continuous noise level) and `add_noise`.
* `AncestralSampler`: the paper's sampler, every step of the trained schedule with the
  posterior variance. `DDIMSampler`: any number of steps and any eta over the same schedule.
  Both have `timesteps`, `noise_level(t)`, `uses_noise(t)` and `step(eps, t, y_t, noise=...)`.
* The few-step solvers over the same composed noise, behind the same interface, and
  `make_sampler_for(kind, buffers, ...)` (a fresh sampler of any kind) live in
  `viewfusion.model.solvers`. The names (`SAMPLER_KINDS`), default steps and cost in U-Net calls per
  target and view (`unet_calls`) are owned by the torch-free `viewfusion.model.samplers` and
  re-exported here.

Timesteps (`spaced_timesteps`, a setting of every sampler but the ancestral one): by default
DDIM keeps its "linspace" spacing (T-1 down to 0) and every few-step solver uses "trailing"
spacing (T-1 down to T/steps - 1); "karras" and "lambda" put most steps at low noise
(`viewfusion.model.samplers.DEFAULT_SPACING`, `SPACINGS`). The last step of each goes to gamma = 1
(sigma = 0), where it returns its (clamped) prediction of x0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import torch
from torch import Tensor

# The clamp rule's one owner is the (torch-free) config module; samplers and ViewFusion use it.
from viewfusion.config import SCHEDULES, check_clamp

# Names, default steps and costs have one torch-free owner, viewfusion.model.samplers (re-exported).
from viewfusion.model.samplers import DEFAULT_SPACING, DEFAULT_STEPS, SAMPLER_KINDS, SPACINGS, unet_calls

__all__ = [
    "BUFFER_NAMES",
    "DEFAULT_SPACING",
    "DEFAULT_STEPS",
    "SAMPLER_KINDS",
    "SPACINGS",
    "AncestralSampler",
    "DDIMSampler",
    "Schedule",
    "StepOutput",
    "add_noise",
    "make_beta_schedule",
    "sample_continuous_gamma",
    "spaced_timesteps",
    "unet_calls",
]

# The schedule tensors the official checkpoint stores at its top level, in its order.
BUFFER_NAMES = (
    "gammas",
    "sqrt_recip_gammas",
    "sqrt_recipm1_gammas",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


def make_beta_schedule(
    kind: str, n_timestep: int, linear_start: float = 1e-6, linear_end: float = 1e-2, cosine_s: float = 8e-3
) -> Tensor:
    """Betas (float64, length n_timestep) of the official schedule kinds."""
    if n_timestep < 1:
        raise ValueError(f"n_timestep must be >= 1, got {n_timestep}")
    f64 = {"dtype": torch.float64}
    if kind == "linear":
        return torch.linspace(linear_start, linear_end, n_timestep, **f64)
    if kind == "quad":
        return torch.linspace(linear_start**0.5, linear_end**0.5, n_timestep, **f64) ** 2
    if kind in ("warmup10", "warmup50"):
        # Linear ramp over the first 10% / 50% of the steps, then constant linear_end.
        betas = torch.full((n_timestep,), linear_end, **f64)
        warmup = int(n_timestep * (0.1 if kind == "warmup10" else 0.5))
        betas[:warmup] = torch.linspace(linear_start, linear_end, warmup, **f64)
        return betas
    if kind == "cosine":
        # Improved DDPM (Nichol & Dhariwal 2021) eq. 17: abar(t) = cos^2((t/T + s) / (1 + s) * pi/2).
        steps = torch.arange(n_timestep + 1, **f64) / n_timestep + cosine_s
        abar = torch.cos(steps / (1 + cosine_s) * math.pi / 2).pow(2)
        abar = abar / abar[0]
        return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    raise ValueError(f"kind must be one of {SCHEDULES}, got {kind!r}")


@dataclass(frozen=True)
class Schedule:
    """A discrete noise schedule; all derived tensors are float64 and computed once."""

    betas: Tensor

    def __post_init__(self) -> None:
        betas = torch.as_tensor(self.betas, dtype=torch.float64)
        if betas.dim() != 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a 1-D tensor with every value in (0, 1)")
        object.__setattr__(self, "betas", betas)

    @classmethod
    def make(
        cls, kind: str = "linear", n_timestep: int = 2000, *, linear_start: float = 1e-6,
        linear_end: float = 1e-2, cosine_s: float = 8e-3,
    ) -> Schedule:
        """Defaults: the official "train" schedule, the only one its code ever builds."""
        return cls(make_beta_schedule(kind, n_timestep, linear_start, linear_end, cosine_s))

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    @cached_property
    def alphas_cumprod(self) -> Tensor:
        # DDPM eq. 4: q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), abar_t = prod (1 - beta_s).
        return torch.cumprod(1.0 - self.betas, dim=0)

    @cached_property
    def alphas_cumprod_prev(self) -> Tensor:
        return torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])

    @cached_property
    def posterior_variance(self) -> Tensor:
        # DDPM eq. 7: beta-tilde_t = (1 - abar_{t-1}) / (1 - abar_t) * beta_t (0 at t = 0).
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    def buffers(self, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        """The six tensors of the official state dict, computed in float64 as the official code."""
        abar, abar_prev, betas = self.alphas_cumprod, self.alphas_cumprod_prev, self.betas
        table = {
            "gammas": abar,
            "sqrt_recip_gammas": torch.sqrt(1.0 / abar),
            "sqrt_recipm1_gammas": torch.sqrt(1.0 / abar - 1),
            # Clipped because beta-tilde_0 = 0 (log would be -inf).
            "posterior_log_variance_clipped": torch.log(self.posterior_variance.clamp(min=1e-20)),
            # DDPM eq. 7: mu-tilde_t = coef1 x_0 + coef2 x_t.
            "posterior_mean_coef1": betas * torch.sqrt(abar_prev) / (1.0 - abar),
            "posterior_mean_coef2": (1.0 - abar_prev) * torch.sqrt(1.0 - betas) / (1.0 - abar),
        }
        return {name: table[name].to(dtype) for name in BUFFER_NAMES}


def sample_continuous_gamma(
    gammas: Tensor, batch: int, *, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """SR3 training noise levels: t ~ U{1..T-1}, gamma ~ U(gamma_{t-1}, gamma_t); returns (t, gamma)."""
    device = gammas.device
    t = torch.randint(1, gammas.shape[0], (batch,), device=device, generator=generator)
    lo, hi = gammas[t - 1], gammas[t]
    u = torch.rand(batch, device=device, dtype=gammas.dtype, generator=generator)
    return t, lo + (hi - lo) * u


def add_noise(y_0: Tensor, noise: Tensor, gamma: Tensor) -> Tensor:
    """DDPM eq. 4 with a continuous level (SR3 eq. 5): sqrt(gamma) y_0 + sqrt(1 - gamma) eps; gamma (B,)."""
    gamma = gamma.reshape(-1, *([1] * (y_0.dim() - 1))).to(y_0.dtype)
    return gamma.sqrt() * y_0 + (1 - gamma).sqrt() * noise


def v_target(y_0: Tensor, noise: Tensor, gamma: Tensor) -> Tensor:
    """Salimans & Ho 2022 eq. 9 (alpha^2 = gamma): v = sqrt(gamma) eps - sqrt(1 - gamma) y_0."""
    gamma = gamma.reshape(-1, *([1] * (y_0.dim() - 1))).to(y_0.dtype)
    return gamma.sqrt() * noise - (1 - gamma).sqrt() * y_0


def eps_from_v(v: Tensor, y_t: Tensor, gamma: Tensor) -> Tensor:
    """The noise a v-prediction implies: eps = sqrt(gamma) v + sqrt(1 - gamma) y_t (add_noise
    substituted into v_target); affine in v with fixed y_t, so composing v's composes eps's."""
    gamma = gamma.reshape(-1, *([1] * (y_t.dim() - 1))).to(y_t.dtype)
    return gamma.sqrt() * v + (1 - gamma).sqrt() * y_t


class StepOutput(NamedTuple):
    prev_sample: Tensor
    pred_original_sample: Tensor


def _clamp(x: Tensor, clamp: tuple[float, float] | None) -> Tensor:
    return x if clamp is None else x.clamp(clamp[0], clamp[1])


def _at(table: Tensor, t: Tensor | int, like: Tensor) -> Tensor:
    """table[t] as (B or 1, 1, 1, 1) to broadcast against `like`; t an int or (B,) long tensor."""
    t = torch.as_tensor(t, device=table.device, dtype=torch.long)
    return table[t].to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


class AncestralSampler:
    """The paper's sampler: DDPM ancestral steps t = T-1..0 with the posterior variance.

    Uses the official buffers (float32 from the checkpoint) exactly as the official
    `p_mean_variance`, so a loaded checkpoint samples as it did.
    """

    def __init__(self, buffers: Mapping[str, Tensor], *, clamp: tuple[float, float] | None = (-1.0, 1.0)) -> None:
        missing = [name for name in BUFFER_NAMES if name not in buffers]
        if missing:
            raise ValueError(f"buffers lacks {missing}")
        self.buffers = {name: buffers[name] for name in BUFFER_NAMES}
        self.clamp = check_clamp(clamp)
        self.num_timesteps = self.buffers["gammas"].shape[0]
        self.timesteps = torch.arange(self.num_timesteps - 1, -1, -1)

    def noise_level(self, t: Tensor | int) -> Tensor:
        """The U-Net's conditioning gamma_t for discrete step(s) t."""
        return self.buffers["gammas"][torch.as_tensor(t, device=self.buffers["gammas"].device)]

    def uses_noise(self, t: int) -> bool:
        return int(t) > 0

    def mean_variance(self, eps: Tensor, y_t: Tensor, t: Tensor | int) -> tuple[Tensor, Tensor, Tensor]:
        """(posterior mean, clipped log variance, predicted x0) of p(y_{t-1} | y_t)."""
        b = self.buffers
        # DDPM eq. 15 inverted: x0 = y_t / sqrt(gamma_t) - sqrt(1/gamma_t - 1) eps.
        y_0 = _at(b["sqrt_recip_gammas"], t, y_t) * y_t - _at(b["sqrt_recipm1_gammas"], t, y_t) * eps
        y_0 = _clamp(y_0, self.clamp)
        # DDPM eq. 7: the posterior q(y_{t-1} | y_t, x0) evaluated at the predicted x0.
        mean = _at(b["posterior_mean_coef1"], t, y_t) * y_0 + _at(b["posterior_mean_coef2"], t, y_t) * y_t
        log_var = _at(b["posterior_log_variance_clipped"], t, y_t)
        return mean, log_var.expand(y_t.shape[0], *log_var.shape[1:]), y_0

    def step(self, eps: Tensor, t: int, y_t: Tensor, *, noise: Tensor | None = None) -> StepOutput:
        """One ancestral step (DDPM Algorithm 2, sigma_t^2 = beta-tilde_t); noise needed for t > 0."""
        mean, log_var, y_0 = self.mean_variance(eps, y_t, t)
        if not self.uses_noise(t):
            return StepOutput(mean, y_0)
        if noise is None:
            raise ValueError(f"noise is required for the ancestral step at t={int(t)} > 0")
        return StepOutput(mean + (0.5 * log_var).exp() * noise, y_0)


def spaced_timesteps(num_timesteps: int, steps: int, spacing: str = "linspace", gammas: Tensor | None = None) -> Tensor:
    """`steps` distinct timesteps of the trained schedule, descending from T-1 (`SPACINGS`).

    "linspace" (DDIM's): evenly spaced from T-1 down to 0, rounded. "trailing" (Lin et al. 2024,
    "Common diffusion noise schedules and sample steps are flawed", Table 2): round(T k / steps)
    - 1 for k = steps..1, so T-1 down to T/steps - 1; the last step then jumps from there to
    gamma = 1 instead of spending a call at t = 0 (gamma = 1 - 1e-6 on the paper's schedule).
    "karras" and "lambda" need the schedule's `gammas`: even in s^(1/7) (Karras et al. 2022 eq. 5,
    rho = 7) or in log s (even log-SNR: Lu et al. 2022, diffusers' use_lu_lambdas), from s(T-1)
    down to s(0), where s = sigma / alpha = sqrt((1 - gamma) / gamma); each level goes to the
    trained timestep nearest in log s. Both spend most steps at low noise, where a sample's
    detail forms: the paper schedule's linear betas put t = 0..199 in s = 0.001..0.16.
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in 1..{num_timesteps} (the trained schedule), got {steps}")
    if spacing == "linspace":
        return torch.linspace(num_timesteps - 1, 0, steps, dtype=torch.float64).round().long()
    if spacing == "trailing":
        k = torch.arange(steps, 0, -1, dtype=torch.float64)
        return (k * num_timesteps / steps).round().long() - 1
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if gammas is None or gammas.shape != (num_timesteps,):
        raise ValueError(f"spacing {spacing!r} needs the schedule's {num_timesteps} gammas")
    log_s = (0.5 * ((1 - gammas.double()) / gammas.double()).log()).cpu()  # increasing in t
    if steps == 1:
        return torch.tensor([num_timesteps - 1])
    # The ends of the grid: the finite levels (a stored table may hold gamma = 1 at t = 0: s = 0).
    finite = log_s[log_s.isfinite()]
    high, low = finite.max(), finite.min()
    frac = torch.linspace(0, 1, steps, dtype=torch.float64)
    if spacing == "lambda":
        levels = high + frac * (low - high)
    else:  # karras, EDM eq. 5 with rho = 7
        top, bottom = (high / 7).exp(), (low / 7).exp()
        levels = 7 * (top + frac * (bottom - top)).log()
    return _distinct_descending((levels[:, None] - log_s[None, :]).abs().argmin(dim=1), num_timesteps)


def _distinct_descending(ts: Tensor, num_timesteps: int) -> Tensor:
    """Nearest-level timesteps made strictly decreasing within [0, T-1]: where rounding put two
    levels on one timestep (at low noise, for many steps) the later moves down, then up again
    if it would pass 0. Possible for any steps <= T; levels already distinct are kept."""
    out = ts.tolist()
    out[0] = num_timesteps - 1
    for i in range(1, len(out)):
        out[i] = min(out[i], out[i - 1] - 1)
    out[-1] = max(out[-1], 0)
    for i in range(len(out) - 2, -1, -1):
        out[i] = max(out[i], out[i + 1] + 1)
    return torch.tensor(out, dtype=torch.long)


class DDIMSampler:
    """DDIM (Song et al. 2021) over the trained schedule with any number of steps and any eta.

    Timesteps are `steps` values from T-1 down (`spaced_timesteps`; by default "linspace", evenly
    spaced down to 0); eta=0 is deterministic, eta=1 with all T steps is the ancestral sampler
    (same mean, same variance).
    """

    def __init__(
        self, gammas: Tensor, *, steps: int = 50, eta: float = 0.0, clamp: tuple[float, float] | None = (-1.0, 1.0),
        spacing: str = DEFAULT_SPACING["ddim"],
    ) -> None:
        total = gammas.shape[0]
        if not 1 <= steps <= total:
            raise ValueError(f"steps must be in 1..{total} (the trained schedule), got {steps}")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.gammas, self.eta, self.clamp = gammas, float(eta), check_clamp(clamp)
        self.num_timesteps = total
        # Python floats (float64) of the trained gammas: no device sync per step.
        self._abar = gammas.detach().double().cpu().tolist()
        self.timesteps = spaced_timesteps(total, steps, spacing, gammas)
        # Step i goes from timesteps[i] to timesteps[i+1]; the last one to "t = -1" (gamma = 1).
        self._prev = dict(zip(self.timesteps.tolist(), self.timesteps.tolist()[1:] + [-1]))

    def noise_level(self, t: Tensor | int) -> Tensor:
        return self.gammas[torch.as_tensor(t, device=self.gammas.device)]

    def uses_noise(self, t: int) -> bool:
        return self.eta > 0 and self._prev[int(t)] >= 0

    def sigma(self, t: int) -> float:
        """DDIM eq. 16: sigma = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev)."""
        a_t, a_prev = self._gammas_at(t)
        return self.eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))

    def _gammas_at(self, t: int) -> tuple[float, float]:
        prev = self._prev[int(t)]
        return self._abar[int(t)], (1.0 if prev < 0 else self._abar[prev])

    def step(self, eps: Tensor, t: int, y_t: Tensor, *, noise: Tensor | None = None) -> StepOutput:
        if int(t) not in self._prev:
            raise ValueError(f"t={int(t)} is not one of this sampler's timesteps")
        a_t, a_prev = self._gammas_at(t)
        y_0 = _clamp((y_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t), self.clamp)
        # Re-derive eps from the clamped x0 so both DDIM terms describe the same x0
        # (as guided-diffusion's ddim_sample does).
        eps = (y_t - math.sqrt(a_t) * y_0) / math.sqrt(1 - a_t)
        sigma = self.sigma(t)
        # DDIM eq. 12: x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z.
        prev = math.sqrt(a_prev) * y_0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
        if self.uses_noise(t):
            if noise is None:
                raise ValueError(f"noise is required for the DDIM step at t={int(t)} with eta={self.eta}")
            prev = prev + sigma * noise
        return StepOutput(prev, y_0)
