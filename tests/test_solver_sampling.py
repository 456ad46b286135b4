"""Few-step solvers inside the model's sampling loop: batch invariance and recorded view weights
(Fig. 2) for every solver (their steps against closed forms: test_solvers.py)."""

from __future__ import annotations

import math

import pytest
import torch
from train_utils import SAMPLE_SMALL, TINY

from viewfusion.model.diffusion import unet_calls
from viewfusion.model.samplers import SOLVER_KINDS as SOLVERS
from viewfusion.model.viewfusion import count_unet_evals

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_model():
    """The tiny config (v-prediction, clamp [0, 1]) shrunk as the sampling tests shrink it."""
    from viewfusion.configfile import load_config
    from viewfusion.model.build import build_model

    torch.manual_seed(0)
    model = build_model(load_config(TINY, [*SAMPLE_SMALL, "model.image_size=16"])).eval()
    model.row_batch = 4  # U-Net calls of a fixed size: a target's rows never see its batch
    return model


def views(batch=3, n=3, size=16):
    gen = torch.Generator().manual_seed(10)
    return (torch.rand(batch, n, 3, size, size, generator=gen), torch.tensor([3, 1, 2][:batch]),
            torch.rand(batch, generator=gen) * 2 * math.pi)


@pytest.mark.parametrize("kind, spacing", [*((k, None) for k in SOLVERS), ("ddim", "lambda"),
                                           ("dpmpp-2m-sde", "karras")])
def test_generate_is_batch_invariant_for_every_solver(tiny_model, kind, spacing):
    """A target with a given seed gets the same image alone, in a batch of 3, or reordered."""
    y_cond, view_count, angle = views()
    seeds = torch.tensor([11, 12, 13])
    kw = {"sampler": kind, "steps": 3, "spacing": spacing, **({"eta": 1.0} if kind == "ddim" else {})}
    together = tiny_model.generate(y_cond, view_count, angle, seeds=seeds, **kw)
    alone = tiny_model.generate(y_cond[1:2, :1], view_count[1:2], angle[1:2], seeds=seeds[1:2], **kw)
    swapped = tiny_model.generate(y_cond.flip(0), view_count.flip(0), angle.flip(0), seeds=seeds.flip(0), **kw)
    assert torch.equal(alone[0], together[1])
    assert torch.equal(swapped.flip(0), together)
    other = tiny_model.generate(y_cond[1:2], view_count[1:2], angle[1:2], seeds=[99], **kw)
    assert (other - alone).abs().max() > 1e-3
    assert together.shape == (3, 3, 16, 16) and together.min() >= 0 and together.max() <= 1


@pytest.mark.parametrize("kind", SOLVERS)
def test_view_weights_are_recorded_for_every_solver(tiny_model, kind):
    y_cond, view_count, angle = views(batch=2)
    steps, every = 3, 2
    calls = unet_calls(kind, steps, tiny_model.num_timesteps)
    out = tiny_model.generate(y_cond, view_count, angle, sampler=kind, steps=steps, seeds=[1, 2],
                              return_weights=True, weights_every=every)
    timesteps = tiny_model.make_sampler(kind, steps=steps).timesteps.tolist()
    positions = list(range(calls - 1, -1, -every))[::-1]  # counted back from the last call
    assert out.weight_steps.tolist() == [timesteps[p] for p in positions]
    assert out.weights.shape == (len(positions), 2, 3, 16, 16) and out.weights.dtype == torch.float16
    assert bool((out.weights[:, 1, 0] == 1).all()) and bool((out.weights[:, 1, 1:] == 0).all())  # 1 view
    torch.testing.assert_close(out.weights[:, 0].float().sum(dim=1), torch.ones(len(positions), 16, 16),
                               atol=2e-3, rtol=0)
    assert out.unet_evals == count_unet_evals(view_count, calls) == 4 * calls
    images = tiny_model.generate(y_cond, view_count, angle, sampler=kind, steps=steps, seeds=[1, 2])
    assert torch.equal(images, out.images)
