"""The U-Net and the composition: against reference loops, padding, seeds, overfitting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_utils import SCHEDULE, TINY_UNET, batch, tiny_model

from viewfusion.model.diffusion import Schedule, add_noise, sample_continuous_gamma
from viewfusion.model.unet import UNet
from viewfusion.model.viewfusion import ViewFusion, count_unet_evals

pytestmark = pytest.mark.usefixtures("one_thread")


def reference_compose(model, y_t, y_cond, view_count, angle, gamma):
    """The official algorithm, one target at a time."""
    eps, weights = [], torch.zeros(*y_cond.shape)
    for i, v in enumerate(view_count.tolist()):
        x = torch.cat([y_cond[i, :v], y_t[i : i + 1].expand(v, -1, -1, -1)], dim=1)
        out = model.denoiser(x, angle[i : i + 1].expand(v), gamma[i : i + 1].expand(v))
        w = torch.softmax(out[:, 3:], dim=0) if model.weighting else torch.full_like(out[:, :3], 1 / v)
        eps.append((out[:, :3] * w).sum(0))
        weights[i, :v] = w
    return torch.stack(eps), weights


@pytest.mark.parametrize("weighting", [True, False])
def test_compose_equals_per_sample_loop(weighting):
    model = tiny_model(weighting=weighting)
    y_t, y_cond, angle, gamma = batch(b=6)
    view_count = torch.randint(1, 6, (6,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eps, weights = model.compose(y_t, y_cond, view_count, angle, gamma)
        ref_eps, ref_weights = reference_compose(model, y_t, y_cond, view_count, angle, gamma)
    torch.testing.assert_close(eps, ref_eps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights, ref_weights, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(weights.sum(1), torch.ones_like(eps))
    assert model.unet_evals == int(view_count.sum())


def test_v_prediction_composes_v_and_samples_its_noise():
    """Weights sum to 1 per pixel, so composing v's then converting equals converting each view's
    v then composing: the paper's composition is unchanged by the parameterization."""
    from viewfusion.model.diffusion import eps_from_v, v_target

    model = tiny_model()
    model.prediction = "v"
    y_t, y_cond, angle, gamma = batch(b=3)
    view_count = torch.tensor([1, 4, 2])
    with torch.no_grad():
        eps, weights = model.predict_noise(y_t, y_cond, view_count, angle, gamma)
        ref_v, ref_weights = reference_compose(model, y_t, y_cond, view_count, angle, gamma)
        per_view = eps_from_v(ref_v, y_t, gamma)
    torch.testing.assert_close(eps, per_view, atol=1e-5, rtol=1e-5)
    y0, noise = torch.rand_like(y_t), torch.randn_like(y_t)
    gen = torch.Generator().manual_seed(3)
    loss = model.loss(y0, y_cond, view_count, angle, noise=noise, generator=gen)
    gen = torch.Generator().manual_seed(3)
    _, g = sample_continuous_gamma(model.gammas, 3, generator=gen)
    out, _ = model.compose(add_noise(y0, noise, g), y_cond, view_count, angle, g)
    torch.testing.assert_close(loss, F.mse_loss(out, v_target(y0, noise, g)))
    with pytest.raises(ValueError, match="prediction"):
        ViewFusion(model.denoiser, SCHEDULE, prediction="x0")


def test_row_batch_gives_each_target_the_same_result_alone_or_in_a_batch():
    """Sampling calls the U-Net with a fixed number of rows (kernels are picked by batch size):
    a target's composed noise is then bit-identical alone or among others; padding rows are
    neither counted nor returned."""
    model = tiny_model()
    model.row_batch = 4
    y_t, y_cond, angle, gamma = batch(b=5)
    view_count = torch.tensor([1, 5, 2, 3, 1])
    with torch.no_grad():
        eps, weights = model.compose(y_t, y_cond, view_count, angle, gamma)
        for i, n in enumerate(view_count.tolist()):
            one, _ = model.compose(y_t[i : i + 1], y_cond[i : i + 1, :n], view_count[i : i + 1], angle[i : i + 1],
                                   gamma[i : i + 1])
            assert torch.equal(one[0], eps[i])
        ref, ref_weights = reference_compose(model, y_t, y_cond, view_count, angle, gamma)
    torch.testing.assert_close(eps, ref, atol=1e-5, rtol=1e-5)
    assert model.unet_evals == 2 * int(view_count.sum())  # compose twice (batch + singles), no padding


def test_one_view_gets_weight_exactly_one():
    model = tiny_model()
    y_t, y_cond, angle, gamma = batch(b=3)
    with torch.no_grad():
        eps, weights = model.compose(y_t, y_cond, torch.tensor([1, 1, 3]), angle, gamma)
    assert bool((weights[:2, 0] == 1).all()) and bool((weights[:2, 1:] == 0).all())
    with torch.no_grad():
        single = model.denoiser(torch.cat([y_cond[:2, 0], y_t[:2]], 1), angle[:2], gamma[:2])
    # The composed noise is that view's own prediction (up to the U-Net batch size's rounding).
    torch.testing.assert_close(eps[:2], single[:, :3], atol=1e-5, rtol=0)


def test_padding_never_leaks():
    model = tiny_model().train()
    y_t, y_cond, angle, gamma = batch(b=3)
    view_count = torch.tensor([2, 5, 1])
    poisoned = y_cond.clone()
    for i, v in enumerate(view_count.tolist()):
        poisoned[i, v:] = float("nan")  # padded views may hold anything, even NaN

    def run(cond):
        model.zero_grad()
        eps, weights = model.compose(y_t, cond, view_count, angle, gamma)
        eps.square().mean().backward()
        return eps.detach(), weights.detach(), [p.grad.clone() for p in model.parameters()]

    clean, dirty = run(y_cond), run(poisoned)
    assert torch.equal(clean[0], dirty[0]) and torch.equal(clean[1], dirty[1])
    assert all(torch.equal(a, b) for a, b in zip(clean[2], dirty[2]))
    for i, v in enumerate(view_count.tolist()):
        assert bool((clean[1][i, v:] == 0).all())


def test_bad_view_counts_and_shapes_raise():
    model = tiny_model()
    y_t, y_cond, angle, gamma = batch(b=2, n=3)
    for bad in ([0, 2], [1, 4]):
        with pytest.raises(ValueError, match="view_count"):
            model.compose(y_t, y_cond, torch.tensor(bad), angle, gamma)
    with pytest.raises(ValueError, match="view_count"):
        model.loss(y_t, y_cond, torch.tensor([2, 0]), angle)
    with pytest.raises(ValueError, match="view_count"):
        model.generate(y_cond, torch.tensor([0, 1]), angle, sampler="ddim", steps=2)
    with pytest.raises(ValueError, match="angle"):
        model.compose(y_t, y_cond, torch.tensor([1, 2]), angle[:, None, None], gamma)
    with pytest.raises(ValueError, match="y_ref"):
        model.compose(y_t, y_cond, torch.tensor([1, 2]), angle, gamma, y_ref=y_t)
    with pytest.raises(ValueError, match="in_channel"):
        ViewFusion(UNet(in_channel=6, **TINY_UNET), SCHEDULE, relative=True)
    with pytest.raises(ValueError, match="out_channel"):
        ViewFusion(UNet(out_channel=3, **TINY_UNET), SCHEDULE, weighting=True)
    with pytest.raises(ValueError, match="clamp"):
        ViewFusion(UNet(**TINY_UNET), SCHEDULE, clamp=(1.0, 0.0))
    with pytest.raises(ValueError, match="noise_level"):
        model.denoiser(torch.zeros(2, 6, 16, 16), angle, gamma[:1])


def test_relative_variant_concatenates_view_reference_target():
    class Recorder(torch.nn.Module):
        def forward(self, x, angle, noise_level):
            self.x, self.angle = x, angle
            return torch.zeros(x.shape[0], 6, *x.shape[2:])

    model = ViewFusion(Recorder(), SCHEDULE, relative=True)
    y_t, y_cond, angle, gamma = batch(b=2, n=3)
    y_ref = torch.rand_like(y_t)
    model.compose(y_t, y_cond, torch.tensor([2, 1]), angle, gamma, y_ref=y_ref)
    rows = [(0, 0), (0, 1), (1, 0)]
    x = model.denoiser.x
    assert x.shape == (3, 9, 16, 16)
    for r, (i, v) in enumerate(rows):
        assert torch.equal(x[r, :3], y_cond[i, v]) and torch.equal(x[r, 3:6], y_ref[i])
        assert torch.equal(x[r, 6:], y_t[i]) and model.denoiser.angle[r] == angle[i]
    with pytest.raises(ValueError, match="y_ref"):
        model.compose(y_t, y_cond, torch.tensor([2, 1]), angle, gamma)


def test_bf16_autocast_training_step_runs():
    model = tiny_model().train()
    y_0, y_cond, angle, _ = batch(b=2, n=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(y_0, y_cond, torch.tensor([2, 1]), angle, generator=torch.Generator().manual_seed(0))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and bool(g.isfinite().all()) for g in grads)


def test_loss_is_seeded_and_accepts_column_angles():
    model = tiny_model()
    y_0, y_cond, angle, _ = batch(b=2, n=3)
    view_count = torch.tensor([3, 1])
    a = model.loss(y_0, y_cond, view_count, angle, generator=torch.Generator().manual_seed(3))
    b = model.loss(y_0, y_cond, view_count, angle[:, None], generator=torch.Generator().manual_seed(3))
    c = model(y_0, y_cond, view_count, angle, generator=torch.Generator().manual_seed(4))
    assert a.dim() == 0 and torch.equal(a, b) and not torch.equal(a, c)


def test_generate_outputs_and_weights():
    model = tiny_model()
    _, y_cond, angle, _ = batch(b=2, n=4)
    view_count = torch.tensor([3, 1])
    out = model.generate(y_cond, view_count, angle, sampler="ddim", steps=5, seeds=[1, 2],
                         return_weights=True, weights_every=2)
    assert out.images.shape == (2, 3, 16, 16) and out.images.min() >= 0 and out.images.max() <= 1
    assert out.weights.shape == (3, 2, 4, 16, 16) and out.weights.dtype == torch.float16
    assert out.weight_steps.tolist() == model.make_sampler("ddim", steps=5).timesteps.tolist()[::-2][::-1]
    assert out.unet_evals == count_unet_evals(view_count, 5) == 20
    assert bool((out.weights[:, 1, 0] == 1).all()) and bool((out.weights[:, 0, 3] == 0).all())
    images = model.generate(y_cond, view_count, angle, sampler="ddim", steps=5, seeds=[1, 2])
    assert torch.equal(images, out.images)
    with pytest.raises(ValueError, match="ddim"):
        model.generate(y_cond, view_count, angle, sampler="ddpm", steps=10)


def test_ddim_eta0_is_deterministic_whatever_the_global_rng():
    model = tiny_model()
    _, y_cond, angle, _ = batch(b=2, n=2)
    runs = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        runs.append(model.generate(y_cond, torch.tensor([2, 1]), angle, sampler="ddim", steps=4, seeds=[7, 8]))
    assert torch.equal(*runs)


@pytest.mark.parametrize("sampler, steps, eta", [("ddim", 4, 1.0), ("ddpm", None, 0.0)])
def test_per_target_seeds_are_batch_invariant(sampler, steps, eta):
    model = tiny_model(image_size=8, attn_res=(4,))
    _, y_cond, angle, _ = batch(b=3, n=3, size=8)
    view_count, seeds = torch.tensor([3, 1, 2]), torch.tensor([11, 12, 13])
    if sampler == "ddpm":  # the full 2000-step ancestral chain on a short schedule
        model = ViewFusion(model.denoiser, Schedule.make(n_timestep=6)).eval()
    kw = dict(sampler=sampler, steps=steps, eta=eta)
    together = model.generate(y_cond, view_count, angle, seeds=seeds, **kw)
    alone = model.generate(y_cond[1:2], view_count[1:2], angle[1:2], seeds=seeds[1:2], **kw)
    swapped = model.generate(y_cond.flip(0), view_count.flip(0), angle.flip(0), seeds=seeds.flip(0), **kw)
    torch.testing.assert_close(alone[0], together[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(swapped.flip(0), together, atol=1e-5, rtol=0)
    other_seed = model.generate(y_cond[1:2], view_count[1:2], angle[1:2], seeds=[99], **kw)
    assert (other_seed - alone).abs().max() > 1e-2


@pytest.mark.slow
def test_tiny_model_overfits_one_scene():
    torch.manual_seed(0)
    model = ViewFusion(UNet(**{**TINY_UNET, "image_size": 32}), SCHEDULE).train()
    scene = torch.rand(1, 3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y_0, y_cond = scene[:, 0].expand(4, -1, -1, -1), scene[:, 1:].expand(4, -1, -1, -1, -1)
    view_count, angle = torch.tensor([1, 2, 2, 1]), torch.full((4,), 0.5)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen, losses = torch.Generator().manual_seed(0), []
    for _ in range(150):
        loss = model.loss(y_0, y_cond, view_count, angle, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    print(f"overfit: loss {first:.3f} -> {last:.3f}")
    assert last * 5 <= first, f"loss fell from {first:.3f} to {last:.3f} only"
