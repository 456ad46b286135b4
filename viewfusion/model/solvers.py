"""Few-step solvers of ViewFusion's composed noise (issue 19), and `make_sampler_for`, the one
factory of every sampler kind (viewfusion.model.samplers owns the names).

`DPMSolverPP` (DPM-Solver++ 2M, and its SDE variant), `UniPC` (bh2, order 2), `EulerSolver` and
`HeunSolver` (Karras et al. 2022 Algorithm 1) have the interface of viewfusion.model.diffusion's
samplers: `timesteps`, `noise_level(t)`, `uses_noise(t)`, `step(eps, t, y_t, noise=...)`. They
are stateful (multistep history, Heun's two stages): one sampler object per generation, `step`
called once per entry of `timesteps`, in order. `timesteps` lists the U-Net evaluations, so its
length is the cost (Heun repeats the interior timesteps: its 2nd-order stage evaluates at the
next grid point).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from viewfusion.model.diffusion import (
    DEFAULT_SPACING,
    DEFAULT_STEPS,
    AncestralSampler,
    DDIMSampler,
    StepOutput,
    _clamp,
    check_clamp,
    spaced_timesteps,
)
from viewfusion.model.samplers import check_kind as _check_kind
from viewfusion.model.samplers import spacing_of

__all__ = ["SOLVER_SPACING", "DPMSolverPP", "EulerSolver", "HeunSolver", "UniPC", "make_sampler_for"]


# ---------------------------------------------------------------------------------------------
# Few-step solvers of the probability-flow ODE (and one SDE) over the composed noise.
#
# Notation of DPM-Solver (Lu et al. 2022a/b) for the VP process y_t = alpha_t x0 + sigma_t eps:
# alpha_t = sqrt(gamma_t), sigma_t = sqrt(1 - gamma_t), lambda_t = log(alpha_t / sigma_t) (the
# half log-SNR), h = lambda_next - lambda_now. Karras et al. 2022 (EDM) integrate the same ODE
# in the variable x~ = y / alpha with noise level s = sigma / alpha = sqrt((1 - gamma) / gamma):
# dx~/ds = (x~ - D(x~; s)) / s (EDM eq. 3 with s(t) = 1; k-diffusion's `to_d`). Here
# D = x0-hat = (y - sigma eps-hat) / alpha, clamped like the other samplers (a setting).
# The grid is `spaced_timesteps` plus a final point gamma = 1 (alpha = 1, sigma = s = 0,
# lambda = +inf); every solver's last step (into sigma = 0) is first order and returns x0-hat.
# Python floats (float64) of the trained gammas, as DDIMSampler: the same x0-hat to the bit.
# ---------------------------------------------------------------------------------------------


# The default timesteps of every few-step solver (DDIM keeps "linspace", its published spacing).
# On the paper's schedule (beta from 1e-6) t = 0 is ~noise-free (lambda 6.9 against 1.0 at t =
# T/10), so an even grid ending at t = 0 makes the second-order solvers extrapolate over one long
# last step in lambda; "trailing" avoids it (docs/NOTES.md, "Few-step solvers": Gaussian-data
# errors by spacing). "karras" and "lambda" grids step through low noise in short steps instead.
SOLVER_SPACING = DEFAULT_SPACING["dpmpp-2m"]


class _GridSolver:
    """Shared by the few-step solvers: the grid, its coefficients, x0-hat and the step order."""

    kind = ""

    def __init__(self, gammas: Tensor, *, steps: int = 20, clamp: tuple[float, float] | None = (-1.0, 1.0),
                 spacing: str = SOLVER_SPACING) -> None:
        self.gammas, self.clamp, self.spacing = gammas, check_clamp(clamp), spacing
        self.num_timesteps = gammas.shape[0]
        self.grid = spaced_timesteps(self.num_timesteps, steps, spacing, gammas).tolist()
        self.steps = len(self.grid)
        table = gammas.detach().double().cpu().tolist()
        abar = [table[t] for t in self.grid] + [1.0]  # + the final point, gamma = 1
        self._alpha = [math.sqrt(a) for a in abar]
        self._sigma = [math.sqrt(1.0 - a) for a in abar]
        self._lam = [math.log(al / si) if si > 0 else math.inf for al, si in zip(self._alpha, self._sigma)]
        self._s = [si / al for al, si in zip(self._alpha, self._sigma)]  # Karras' sigma
        self._index = {t: i for i, t in enumerate(self.grid)}
        self.timesteps = torch.tensor(self._evaluations(), dtype=torch.long)
        self._calls = 0  # entries of `timesteps` stepped so far

    def _evaluations(self) -> list[int]:
        """The timestep of each U-Net evaluation, in order (one per grid point by default)."""
        return list(self.grid)

    def noise_level(self, t: Tensor | int) -> Tensor:
        return self.gammas[torch.as_tensor(t, device=self.gammas.device)]

    def uses_noise(self, t: int) -> bool:
        return False

    def _advance(self, t: int) -> int:
        """Checks that `t` is the next entry of `timesteps`; returns its position there."""
        k = self._calls
        if k >= len(self.timesteps) or int(t) != int(self.timesteps[k]):
            want = "none (the run is complete)" if k >= len(self.timesteps) else int(self.timesteps[k])
            raise ValueError(f"{self.kind} is stepped once per entry of its timesteps, in order: "
                             f"got t={int(t)}, the next is {want} (make a new sampler per generation)")
        self._calls += 1
        return k

    def _x0(self, eps: Tensor, y: Tensor, i: int) -> Tensor:
        """DDPM eq. 15 inverted at grid point i, clamped: x0 = (y - sigma eps) / alpha."""
        return _clamp((y - self._sigma[i] * eps) / self._alpha[i], self.clamp)


class DPMSolverPP(_GridSolver):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): data prediction, multistep, order 2.

    With `sde=True`: SDE-DPM-Solver++(2M) (Lu et al. 2022b Sec. 5 / their repository and
    diffusers' "sde-dpmsolver++", midpoint), which draws fresh noise every step but the last;
    its first-order step is the DDIM eta=1 (respaced ancestral) step. One U-Net call per step.
    """

    def __init__(self, gammas: Tensor, *, steps: int = 20, clamp: tuple[float, float] | None = (-1.0, 1.0),
                 spacing: str = SOLVER_SPACING, sde: bool = False) -> None:
        self.sde = bool(sde)
        self.kind = "dpmpp-2m-sde" if sde else "dpmpp-2m"
        super().__init__(gammas, steps=steps, clamp=clamp, spacing=spacing)
        self._prev_x0: Tensor | None = None

    def uses_noise(self, t: int) -> bool:
        # The last step lands on sigma = 0, where the noise term sigma_next sqrt(1 - e^{-2h}) is 0.
        if int(t) not in self._index:
            raise ValueError(f"t={int(t)} is not one of this sampler's timesteps")
        return self.sde and self._index[int(t)] < self.steps - 1

    def step(self, eps: Tensor, t: int, y_t: Tensor, *, noise: Tensor | None = None) -> StepOutput:
        i = self._advance(t)
        x0 = self._x0(eps, y_t, i)
        prev_x0, self._prev_x0 = self._prev_x0, x0
        if i == self.steps - 1:
            # Into sigma = 0 (h = inf): the first-order step is x0-hat itself (lower order final).
            return StepOutput(x0, x0)
        n, a, s = i + 1, self._alpha, self._sigma
        h = self._lam[n] - self._lam[i]
        if prev_x0 is None:
            d = x0  # first step: DPM-Solver++(1) = DDIM
        else:
            # Algorithm 2: r = h_{i-1} / h_i, D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}.
            r = (self._lam[i] - self._lam[i - 1]) / h
            d = (1 + 0.5 / r) * x0 - (0.5 / r) * prev_x0
        if not self.sde:
            # DPM-Solver++ eq. (the 2M update): x_n = sigma_n / sigma_i x_i - alpha_n (e^{-h} - 1) D.
            return StepOutput(s[n] / s[i] * y_t - a[n] * math.expm1(-h) * d, x0)
        if noise is None:
            raise ValueError(f"noise is required for the {self.kind} step at t={int(t)}")
        # SDE-DPM-Solver++(2M): x_n = sigma_n / sigma_i e^{-h} x_i + alpha_n (1 - e^{-2h}) D
        #                            + sigma_n sqrt(1 - e^{-2h}) z.
        em2h = -math.expm1(-2 * h)  # 1 - e^{-2h}
        prev = s[n] / s[i] * math.exp(-h) * y_t + a[n] * em2h * d + s[n] * math.sqrt(em2h) * noise
        return StepOutput(prev, x0)


class UniPC(_GridSolver):
    """UniPC (Zhao et al. 2023) with data prediction, B(h) = e^{-h} - 1 ("bh2"), order 2.

    Each step first corrects the current sample with UniC (their Algorithm 1) using the new
    x0-hat (which the next predictor needs anyway: no extra U-Net call), then predicts with
    UniP-2 (Algorithm 2), which for bh2 is the DPM-Solver++(2M) update. Order 1 at the first
    step (warm-up) and into sigma = 0, as the reference implementation with lower_order_final
    (diffusers' UniPCMultistepScheduler, solver_order=2, solver_type="bh2", predict_x0).
    """

    kind = "unipc"

    def __init__(self, gammas: Tensor, *, steps: int = 20, clamp: tuple[float, float] | None = (-1.0, 1.0),
                 spacing: str = SOLVER_SPACING) -> None:
        super().__init__(gammas, steps=steps, clamp=clamp, spacing=spacing)
        self._x0s: list[Tensor] = []  # x0-hat at grid points i-1, i (at most two kept)
        self._last: Tensor | None = None  # the corrected sample the last predictor started from
        self._last_order = 0

    def _b(self, h: float, order: int) -> list[float]:
        """UniPC's b vector for hh = -h (data prediction), B(h) = e^{hh} - 1:
        b_k = k! phi_{k+1}(hh) / B(h) with phi_1(hh) = (e^{hh} - 1) / hh, phi_{k+1} = (phi_k - 1/k!) / hh."""
        hh = -h
        b_h = math.expm1(hh)
        phi = math.expm1(hh) / hh - 1  # h * phi_2 in their recursion (h_phi_k)
        out, factorial = [], 1
        for k in range(1, order + 1):
            out.append(phi * factorial / b_h)
            factorial *= k + 1
            phi = phi / hh - 1 / factorial
        return out

    def _corrector(self, m_t: Tensor, i: int) -> Tensor:
        """UniC from grid point i-1 (the last sample) to i, with the new model output m_t."""
        o, x = self._last_order, self._last
        m0 = self._x0s[-1]
        a, s = self._alpha[i], self._sigma
        h = self._lam[i] - self._lam[i - 1]
        b_h = math.expm1(-h)
        x_ = s[i] / s[i - 1] * x - a * b_h * m0  # the first-order (DDIM) part
        if o == 1:
            rho = [0.5]  # order 1: rho_c = 1/2 (the trapezoidal corrector)
            return x_ - a * b_h * rho[0] * (m_t - m0)
        # Order 2: R rho = b with R = [[1, 1], [r, 1]], r = (lambda_{i-2} - lambda_{i-1}) / h.
        r = (self._lam[i - 2] - self._lam[i - 1]) / h
        b1, b2 = self._b(h, 2)
        rho0 = (b1 - b2) / (1 - r)
        rho1 = b1 - rho0
        d1 = (self._x0s[-2] - m0) / r
        return x_ - a * b_h * (rho0 * d1 + rho1 * (m_t - m0))

    def _predictor(self, m: Tensor, y: Tensor, i: int, order: int) -> Tensor:
        """UniP from grid point i to i+1 (order 1 or 2, rho_p = 1/2 for order 2 as bh2 gives)."""
        if i == self.steps - 1:
            return m  # into sigma = 0: x0-hat
        n = i + 1
        h = self._lam[n] - self._lam[i]
        b_h = math.expm1(-h)
        x = self._sigma[n] / self._sigma[i] * y - self._alpha[n] * b_h * m
        if order == 2:
            r = (self._lam[i - 1] - self._lam[i]) / h
            d1 = (self._x0s[-1] - m) / r  # the previous x0-hat (not yet shifted in)
            x = x - self._alpha[n] * b_h * 0.5 * d1
        return x

    def step(self, eps: Tensor, t: int, y_t: Tensor, *, noise: Tensor | None = None) -> StepOutput:
        i = self._advance(t)
        m = self._x0(eps, y_t, i)
        if i > 0:
            y_t = self._corrector(m, i)
        order = min(2, i + 1, self.steps - i)
        prev = self._predictor(m, y_t, i, order)
        self._x0s = [*self._x0s[-1:], m]
        self._last, self._last_order = y_t, order
        return StepOutput(prev, m)


class EulerSolver(_GridSolver):
    """Euler's method on the probability-flow ODE in Karras' variables (EDM Algorithm 1 without
    the 2nd-order correction; k-diffusion's `sample_euler`): x~_{i+1} = x~_i + (s_{i+1} - s_i) d_i,
    d_i = (x~_i - D(x~_i; s_i)) / s_i. In exact arithmetic this is the DDIM eta=0 step (Song et
    al. 2021 Sec. 4.3: DDIM is Euler in x / sqrt(alpha-bar) against sigma / alpha). One call per step.
    """

    kind = "euler"

    def step(self, eps: Tensor, t: int, y_t: Tensor, *, noise: Tensor | None = None) -> StepOutput:
        i = self._advance(t)
        x0 = self._x0(eps, y_t, i)
        if i == self.steps - 1:
            return StepOutput(x0, x0)  # s_{i+1} = 0: x~ + (0 - s) (x~ - D) / s = D
        x = y_t / self._alpha[i]
        d = (x - x0) / self._s[i]
        x = x + (self._s[i + 1] - self._s[i]) * d
        return StepOutput(self._alpha[i + 1] * x, x0)


class HeunSolver(_GridSolver):
    """Heun's 2nd-order method, EDM (Karras et al. 2022) Algorithm 1 (deterministic, S_churn = 0;
    k-diffusion's `sample_heun`), in the same variables as `EulerSolver`.

    Step i evaluates D at (x~_i, s_i), takes the Euler step to x~' at s_{i+1}, evaluates D there
    and averages the two slopes; the last step (into s = 0) stays Euler. `timesteps` therefore
    lists t_0, then t_{i+1} twice for i < N-1 (the 2nd-order evaluation of step i, then the first
    of step i+1): 2N - 1 U-Net calls. The intermediate `prev_sample` is the Euler proposal at
    t_{i+1} (as VP sample alpha x~'), which the loop feeds back at that noise level.
    """

    kind = "heun"

    def __init__(self, gammas: Tensor, *, steps: int = 20, clamp: tuple[float, float] | None = (-1.0, 1.0),
                 spacing: str = SOLVER_SPACING) -> None:
        super().__init__(gammas, steps=steps, clamp=clamp, spacing=spacing)
        self._pending: tuple[Tensor, Tensor, int] | None = None  # (x~_i, d_i, i) of the first stage

    def _evaluations(self) -> list[int]:
        return [self.grid[0]] + [t for t in self.grid[1:] for _ in range(2)]

    def step(self, eps: Tensor, t: int, y_t: Tensor, *, noise: Tensor | None = None) -> StepOutput:
        k = self._advance(t)
        if k % 2 == 0:  # first stage of step i = k / 2: Euler proposal
            i = k // 2
            x0 = self._x0(eps, y_t, i)
            if i == self.steps - 1:
                return StepOutput(x0, x0)
            x = y_t / self._alpha[i]
            d = (x - x0) / self._s[i]
            self._pending = (x, d, i)
            return StepOutput(self._alpha[i + 1] * (x + (self._s[i + 1] - self._s[i]) * d), x0)
        # Second stage of step i: the slope at the proposal; x~_{i+1} = x~_i + (s_{i+1} - s_i)(d + d') / 2.
        x, d, i = self._pending
        self._pending = None
        n = i + 1
        x0 = self._x0(eps, y_t, n)
        d2 = (y_t / self._alpha[n] - x0) / self._s[n]
        x = x + (self._s[n] - self._s[i]) * 0.5 * (d + d2)
        return StepOutput(self._alpha[n] * x, x0)


def make_sampler_for(
    kind: str, buffers: Mapping[str, Tensor], *, steps: int | None = None, eta: float = 0.0,
    clamp: tuple[float, float] | None = (-1.0, 1.0), spacing: str | None = None,
):
    """A fresh sampler of `kind` over the schedule `buffers` (the six official tensors; the
    solvers read only "gammas"). eta is DDIM's; the other kinds take none (0). spacing: where
    the steps sit (viewfusion.model.samplers.SPACINGS; None: the kind's default; ddpm takes none)."""
    _check_kind(kind)
    spacing = spacing_of(kind, spacing)
    num_timesteps = buffers["gammas"].shape[0]
    if kind == "ddpm":
        if steps not in (None, num_timesteps) or eta != 0:
            raise ValueError(
                f"the ancestral sampler runs all {num_timesteps} trained steps without eta; "
                "for fewer steps use sampler='ddim' (eta=1 is the respaced ancestral sampler)"
            )
        return AncestralSampler(buffers, clamp=clamp)
    steps = DEFAULT_STEPS[kind] if steps is None else steps
    if kind == "ddim":
        return DDIMSampler(buffers["gammas"], steps=steps, eta=eta, clamp=clamp, spacing=spacing)
    if eta != 0:
        raise ValueError(f"eta is DDIM's setting; sampler {kind!r} takes none (got eta={eta})")
    gammas = buffers["gammas"]
    if kind in ("dpmpp-2m", "dpmpp-2m-sde"):
        return DPMSolverPP(gammas, steps=steps, clamp=clamp, spacing=spacing, sde=kind == "dpmpp-2m-sde")
    solver = {"unipc": UniPC, "euler": EulerSolver, "heun": HeunSolver}[kind]
    return solver(gammas, steps=steps, clamp=clamp, spacing=spacing)
