"""ViewFusion: composable diffusion over a variable number of unposed conditioning views.

Every (target, conditioning view) pair is one U-Net row: input = [view, (reference view,) noisy
target] along channels, output = 3 noise channels (+ 3 weight logits). The noise predictions of
one target's views are composed with a softmax over views of the logits, per pixel and
channel (padding = -inf, so it gets weight exactly 0), or by a plain mean without weighting.

Vectorised: a (B, N) mask `view index < view_count` selects the valid rows, the U-Net runs once on
them, and the results are scattered back into (B, N, ...) for the masked softmax. The state dict
equals the official one (`denoise_fn.*` plus the six schedule buffers), and all sampling reads
those buffers, so a loaded checkpoint samples exactly as the official code did.

`prediction="v"` (not in the paper; the tiny CPU config) trains the network to predict
v = sqrt(gamma) eps - sqrt(1 - gamma) y_0 instead of eps: at high noise the loss then weighs x0
errors directly, which a short run needs to learn to sample at all. Samplers see the noise the
composed v implies (the conversion is affine in v, so composing v's composes eps's).

Relative variant: the denoiser input is [conditioning view, reference view, noisy target] (9
channels) and `angle` is the target azimuth minus the reference view's azimuth.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from viewfusion.config import PREDICTIONS, ModelConfig, check_clamp, unet_channels
from viewfusion.model.diffusion import (
    BUFFER_NAMES,
    AncestralSampler,
    Schedule,
    add_noise,
    eps_from_v,
    sample_continuous_gamma,
    v_target,
)
from viewfusion.model.solvers import make_sampler_for

__all__ = ["PAPER_UNET_KWARGS", "GenerationResult", "SampleStep", "ViewFusion", "count_unet_evals"]

# The paper's denoiser (configs/*-small-v100-4.yaml of the official code): the model config's defaults.
PAPER_UNET_KWARGS = ModelConfig().unet_kwargs()


class SampleStep(NamedTuple):
    t: int  # the timestep just denoised
    y_prev: Tensor  # (B, C, H, W) the sample after this step
    view_weights: Tensor  # (B, N, C, H, W) the composition weights used in this step


class GenerationResult(NamedTuple):
    images: Tensor  # (B, C, H, W) in [0, 1]
    weights: Tensor | None  # (S, B, N, H, W) float16: view weights averaged over colour channels
    weight_steps: Tensor | None  # (S,) the timestep t of each recorded weight map
    unet_evals: int  # U-Net rows evaluated: valid views x steps


def count_unet_evals(view_count: Tensor | Sequence[int], steps: int) -> int:
    """Sampling cost: one U-Net row per valid conditioning view per step."""
    return int(torch.as_tensor(view_count).sum()) * int(steps)


class ViewFusion(nn.Module):
    """The composable diffusion model around a denoiser; see the module docstring."""

    def __init__(
        self,
        denoiser: nn.Module,
        schedule: Schedule,
        *,
        weighting: bool = True,
        relative: bool = False,
        clamp: tuple[float, float] | None = (-1.0, 1.0),
        prediction: str = "eps",
    ) -> None:
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        _check_denoiser(denoiser, weighting=weighting, relative=relative)
        for name, value in schedule.buffers().items():
            self.register_buffer(name, value)
        self.denoise_fn = denoiser
        self.weighting, self.relative, self.prediction = weighting, relative, prediction
        self.clamp = check_clamp(clamp)
        self.unet_evals = 0  # U-Net rows evaluated so far by this module (cost accounting)
        # Sampling sets this: U-Net calls of exactly this many rows (see _denoise_rows).
        self.row_batch: int | None = None

    @property
    def denoiser(self) -> nn.Module:
        return self.denoise_fn

    @property
    def num_timesteps(self) -> int:
        return self.gammas.shape[0]

    def schedule_buffers(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in BUFFER_NAMES}

    def compose(
        self, y_t: Tensor, y_cond: Tensor, view_count: Tensor, angle: Tensor, noise_level: Tensor,
        *, y_ref: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Composed output (B, C, H, W) (noise, or v) and view weights (B, N, C, H, W) (0 on padding).

        noise_level: (B,) continuous gamma. One U-Net batch over the valid rows only.
        """
        view_count, angle = self._check_views(y_t, y_cond, view_count, angle, y_ref)
        batch, views, channels = y_cond.shape[:3]
        mask = torch.arange(views, device=y_cond.device)[None, :] < view_count[:, None]
        rows = mask.nonzero(as_tuple=True)  # (target, view) pairs, targets in order as the official
        parts = [y_cond[rows], y_ref[rows[0]]] if self.relative else [y_cond[rows]]
        target_rows = rows[0]
        out = self._denoise_rows(
            torch.cat([*parts, y_t[target_rows]], dim=1), angle[target_rows], noise_level.reshape(-1)[target_rows]
        )
        self.unet_evals += out.shape[0]
        full = (batch, views, channels, *y_t.shape[2:])
        eps = out.new_zeros(full).index_put(rows, out[:, :channels])
        if self.weighting:
            # The paper's composition: softmax over views of the logits; padding -inf -> weight 0.
            logits = out.new_full(full, float("-inf")).index_put(rows, out[:, channels : 2 * channels])
            weights = torch.softmax(logits, dim=1)
        else:
            weights = (mask / view_count[:, None]).to(out.dtype)[:, :, None, None, None].expand(full)
        return (eps * weights).sum(dim=1), weights

    def _denoise_rows(self, x: Tensor, angle: Tensor, level: Tensor) -> Tensor:
        """The U-Net over all rows; without autograd and with `row_batch` set, in calls of exactly
        `row_batch` rows (the last padded with copies of row 0). Convolution backends pick kernels
        by batch size, so a fixed size makes a row's output independent of the batch around it:
        a target with a given seed then samples the same image in any chunk or batch."""
        size = self.row_batch
        if size is None or torch.is_grad_enabled():
            return self.denoise_fn(x, angle, level)
        rows = x.shape[0]
        index = torch.arange(rows + (-rows) % size, device=x.device)
        index[rows:] = 0
        x, angle, level = x[index], angle[index], level[index]
        outs = [self.denoise_fn(x[i : i + size], angle[i : i + size], level[i : i + size])
                for i in range(0, x.shape[0], size)]
        return torch.cat(outs)[:rows]

    def _check_views(self, y_t, y_cond, view_count, angle, y_ref) -> tuple[Tensor, Tensor]:
        if y_cond.dim() != 5:
            raise ValueError(f"y_cond must be (B, N, C, H, W), got {tuple(y_cond.shape)}")
        batch, views = y_cond.shape[:2]
        if y_t.shape != (batch, *y_cond.shape[2:]):
            raise ValueError(f"the target must be (B, C, H, W) = {(batch, *y_cond.shape[2:])}, got {tuple(y_t.shape)}")
        view_count = torch.as_tensor(view_count, device=y_cond.device)
        if view_count.shape != (batch,) or view_count.is_floating_point():
            raise ValueError(f"view_count must be an integer tensor of shape ({batch},), got {tuple(view_count.shape)}")
        if bool(((view_count < 1) | (view_count > views)).any()):
            raise ValueError(
                f"view_count must be in 1..{views} (y_cond holds {views} views), got {view_count.tolist()}"
            )
        angle = torch.as_tensor(angle, device=y_cond.device)
        if angle.dim() == 2 and angle.shape[1] == 1:
            angle = angle[:, 0]
        if angle.shape != (batch,):
            raise ValueError(f"angle must have shape ({batch},) or ({batch}, 1), got {tuple(angle.shape)}")
        if self.relative != (y_ref is not None):
            raise ValueError("y_ref (B, C, H, W) is required by the relative variant and only by it")
        if y_ref is not None and y_ref.shape != y_t.shape:
            raise ValueError(f"y_ref must have shape {tuple(y_t.shape)}, got {tuple(y_ref.shape)}")
        return view_count.long(), angle.to(y_t.dtype)

    def loss(
        self, y_0: Tensor, y_cond: Tensor, view_count: Tensor, angle: Tensor, *,
        y_ref: Tensor | None = None, noise: Tensor | None = None, generator: torch.Generator | None = None,
    ) -> Tensor:
        """MSE(eps, composed eps-hat) at an SR3 continuous noise level (generator on y_0's device)."""
        _, gamma = sample_continuous_gamma(self.gammas, y_0.shape[0], generator=generator)
        if noise is None:
            noise = torch.randn(y_0.shape, generator=generator, device=y_0.device, dtype=y_0.dtype)
        target = self.training_target(y_0, noise, gamma)
        out, _ = self.compose(add_noise(y_0, noise, gamma), y_cond, view_count, angle, gamma, y_ref=y_ref)
        return F.mse_loss(out, target)

    def predict_noise(
        self, y_t: Tensor, y_cond: Tensor, view_count: Tensor, angle: Tensor, noise_level: Tensor,
        *, y_ref: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(composed noise, view weights): `compose`, with a v-prediction turned into noise."""
        out, weights = self.compose(y_t, y_cond, view_count, angle, noise_level, y_ref=y_ref)
        return self.noise_from_output(out, y_t, noise_level), weights

    def training_target(self, y_0: Tensor, noise: Tensor, gamma: Tensor) -> Tensor:
        """What `compose` is trained to output at level gamma: the noise, or v."""
        return noise if self.prediction == "eps" else v_target(y_0, noise, gamma)

    def noise_from_output(self, out: Tensor, y_t: Tensor, gamma: Tensor) -> Tensor:
        """The noise a `compose` output implies (itself, or converted from v)."""
        return out if self.prediction == "eps" else eps_from_v(out, y_t, gamma)

    def forward(self, y_0: Tensor, y_cond: Tensor, view_count: Tensor, angle: Tensor, **kwargs) -> Tensor:
        """The training loss (what DDP wraps); see `loss`."""
        return self.loss(y_0, y_cond, view_count, angle, **kwargs)

    def reverse_step_mean(
        self, y_t: Tensor, y_cond: Tensor, view_count: Tensor, angle: Tensor, t: Tensor | int,
        *, y_ref: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(mean, log_variance, view_weights) of one ancestral step, as the official p_mean_variance.

        t: int or (B,) long; view_weights (B, N, C, H, W), zero on padded views.
        """
        t = torch.as_tensor(t, device=y_t.device, dtype=torch.long).expand(y_t.shape[0])
        sampler = AncestralSampler(self.schedule_buffers(), clamp=self.clamp)
        eps, weights = self.predict_noise(y_t, y_cond, view_count, angle, sampler.noise_level(t), y_ref=y_ref)
        mean, log_var, _ = sampler.mean_variance(eps, y_t, t)
        return mean, log_var, weights

    def make_sampler(self, kind: str = "ddpm", *, steps: int | None = None, eta: float = 0.0,
                     spacing: str | None = None):
        """A fresh sampler over this model's schedule and clamp; kinds: `SAMPLER_KINDS`.

        "ddpm": the paper's ancestral sampler over all trained steps; "ddim": `steps` (50) DDIM
        steps with `eta`; "dpmpp-2m", "dpmpp-2m-sde", "unipc", "euler", "heun": the few-step
        solvers (`steps`, default 20); `spacing` where the steps sit (None: the kind's default).
        Its `timesteps` list one U-Net call each (see `unet_calls`).
        """
        return make_sampler_for(kind, self.schedule_buffers(), steps=steps, eta=eta, clamp=self.clamp,
                                spacing=spacing)

    @torch.no_grad()
    def iter_sample(
        self, y_cond: Tensor, view_count: Tensor, angle: Tensor, *, sampler: str = "ddpm",
        steps: int | None = None, eta: float = 0.0, seeds: Tensor | Sequence[int] | None = None,
        y_ref: Tensor | None = None, spacing: str | None = None,
    ) -> Iterator[SampleStep]:
        """The sampling loop one step at a time: yields SampleStep(t, y_prev, view_weights).

        seeds (B,): each target draws its initial and per-step noise from its own CPU generator,
        so a target with a given seed gets the same image whatever batch it sits in. One
        SampleStep per U-Net call: Heun's 2nd-order calls yield its Euler proposal as y_prev.
        """
        smp = self.make_sampler(sampler, steps=steps, eta=eta, spacing=spacing)
        batch, _, channels, height, width = y_cond.shape
        generators = _generators(seeds, batch)
        y_t = _randn(generators, (batch, channels, height, width), y_cond)
        for t in smp.timesteps.tolist():
            eps, weights = self.predict_noise(y_t, y_cond, view_count, angle, smp.noise_level(t).expand(batch),
                                              y_ref=y_ref)
            noise = _randn(generators, y_t.shape, y_t) if smp.uses_noise(t) else None
            y_t = smp.step(eps, t, y_t, noise=noise).prev_sample
            yield SampleStep(t, y_t, weights)

    def generate(
        self, y_cond: Tensor, view_count: Tensor, angle: Tensor, *, sampler: str = "ddpm",
        steps: int | None = None, eta: float = 0.0, seeds: Tensor | Sequence[int] | None = None,
        y_ref: Tensor | None = None, return_weights: bool = False, weights_every: int = 1, progress: bool = False,
        spacing: str | None = None,
    ) -> Tensor | GenerationResult:
        """Sample targets (B, C, H, W) in [0, 1]; with return_weights a GenerationResult.

        See `iter_sample` for seeds. Weights are recorded every `weights_every` U-Net calls
        counted back from the last (always included), averaged over colour channels; Heun's
        timesteps repeat (two calls at one t), so positions, not values, pick them.
        """
        if weights_every < 1:
            raise ValueError(f"weights_every must be >= 1, got {weights_every}")
        timesteps = self.make_sampler(sampler, steps=steps, eta=eta, spacing=spacing).timesteps.tolist()
        recorded = set(range(len(timesteps) - 1, -1, -weights_every)) if return_weights else set()
        loop = self.iter_sample(
            y_cond, view_count, angle, sampler=sampler, steps=steps, eta=eta, spacing=spacing, seeds=seeds,
            y_ref=y_ref,
        )
        weights, weight_steps = [], []
        for position, step in enumerate(_progress(loop, progress, total=len(timesteps))):
            if position in recorded:
                weights.append(step.view_weights.mean(dim=2).half())
                weight_steps.append(step.t)
        images = step.y_prev.clamp(0.0, 1.0)
        if not return_weights:
            return images
        return GenerationResult(
            images, torch.stack(weights), torch.tensor(weight_steps), count_unet_evals(view_count, len(timesteps))
        )


def _generators(seeds, batch: int) -> list[torch.Generator] | None:
    if seeds is None:
        return None
    seeds = torch.as_tensor(seeds)
    if seeds.shape != (batch,) or seeds.is_floating_point():
        raise ValueError(f"seeds must be an integer tensor of shape ({batch},), got {tuple(seeds.shape)}")
    return [torch.Generator().manual_seed(int(seed)) for seed in seeds]


def _randn(generators: list[torch.Generator] | None, shape, like: Tensor) -> Tensor:
    """Standard normal noise; per-target CPU generators make it independent of the batch and device."""
    if generators is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    noise = torch.stack([torch.randn(shape[1:], generator=g) for g in generators])
    return noise.to(device=like.device, dtype=like.dtype)


def _progress(steps: Iterable, enabled: bool, *, total: int):
    if not enabled:
        return steps
    from tqdm import tqdm

    return tqdm(steps, desc="sampling", unit="step", total=total)


def _check_denoiser(denoiser: nn.Module, *, weighting: bool, relative: bool) -> None:
    config = getattr(denoiser, "config", None)
    if not isinstance(config, Mapping):
        return  # a foreign denoiser: its output is checked by shape at the first call
    want_in, want_out = unet_channels(relative=relative, weighting=weighting)
    if config["in_channel"] != want_in:
        raise ValueError(f"{'relative' if relative else 'absolute'} ViewFusion needs in_channel={want_in}, "
                         f"the denoiser has {config['in_channel']}")
    # Without weighting a weighting denoiser may still run: its logits are ignored.
    allowed = {want_out} if weighting else {unet_channels(relative=relative, weighting=w)[1] for w in (False, True)}
    if config["out_channel"] not in allowed:
        raise ValueError(f"{'weighting' if weighting else 'mean'} composition needs out_channel in {sorted(allowed)} "
                         f"(noise{' + logits' if weighting else ''}), the denoiser has {config['out_channel']}")
