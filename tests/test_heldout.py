"""`viewfusion heldout`: fixed seeded draws, deterministic and batch-invariant numbers, the loss
itself checked against its definition, ranking, and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from train_utils import load, make_shards, run_train, save_random_model

from viewfusion import cli
from viewfusion.model import checkpoint
from viewfusion.train import heldout

PX32 = ["model.image_size=32"]


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.getbasetemp() / "train-shards")


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory):
    """A 32 px tiny run of 30 steps (v-prediction): its final.pt."""
    out = tmp_path_factory.mktemp("heldout-run") / "run"
    res = run_train(shards, out, "train.max_steps=30", "train.checkpoint_every=30")
    assert res.returncode == 0, res.stderr[-2000:]
    return out / "final.pt"


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(["heldout", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _heldout(capsys, ckpt, shards, out, *extra) -> dict:
    code, _, err = _run(capsys, "--checkpoint", ckpt, "--shards", shards, "--out", out, *extra)
    assert code == 0, err
    return json.loads(out.read_text())


def test_draws_depend_on_seed_and_index_only():
    keys = [f"02691156_{i:04d}" for i in range(7)]
    kw = {"seed": 3, "max_views": 3, "n_timestep": 100}
    draws = heldout.make_draws(keys, count=20, **kw)
    assert heldout.make_draws(keys, count=5, **kw) == draws[:5]  # a draw ignores how many follow
    assert heldout.make_draws(keys, count=20, **{**kw, "seed": 4}) != draws
    assert {len(d.cond_views) for d in draws} == {1, 2, 3}
    assert all(d.target_view not in d.cond_views and 1 <= d.t < 100 and 0 <= d.u < 1 for d in draws)
    # a fixed view count takes the first views of the same permutation: same object, target, level, noise
    one, three = (heldout.make_draws(keys, count=20, views=n, **kw) for n in (1, 3))
    for a, b, c in zip(draws, one, three):
        assert (a.key, a.target_view, a.t, a.u, a.noise_seed) == (b.key, b.target_view, b.t, b.u, b.noise_seed)
        assert c.cond_views[:1] == b.cond_views and len(c.cond_views) == 3
    fixed = heldout.make_draws(keys, count=4, timestep=60, **kw)
    assert all(d.t == 60 and d.u is None for d in fixed)
    assert heldout.band_bounds(2000) == [(1, 500), (501, 1000), (1001, 1500), (1501, 1999)]


def test_identical_output_twice_and_for_any_batch_size(shards, tmp_path, capsys, one_thread):
    ckpt = save_random_model(tmp_path / "m.pt", step=7, sets=PX32)
    first = _heldout(capsys, ckpt, shards, tmp_path / "a.json", "--draws", 24, "--split", "val")
    again = _heldout(capsys, ckpt, shards, tmp_path / "b.json", "--draws", 24, "--split", "val")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    for batch in (1, 5):
        other = _heldout(capsys, ckpt, shards, tmp_path / f"batch{batch}.json", "--draws", 24,
                         "--split", "val", "--batch-size", batch)
        assert other == first
    assert again["step"] == 7 and again["prediction"] == "v" and again["loss"] == "v_mse"
    assert first["v_mse"]["n"] == 24 and first["v_mse"]["se"] > 0 and len(first["bands"]) == 4
    assert sum(b["v_mse"]["n"] for b in first["bands"]) == 24
    assert first["settings"]["max_views"] == 3 and first["settings"]["split"] == "val"
    assert len(first["per_draw"]["eps_mse"]) == 24


def test_the_loss_is_its_definition_on_a_zero_output_model(shards, tmp_path, capsys, one_thread):
    """A denoiser whose last convolution is zero outputs eps-hat = 0: each draw's eps-MSE is the
    mean square of its own noise tensor (the draws' noise is what the JSON says it is)."""
    def zero(model):
        model.denoise_fn.final_conv.block[3].weight.zero_()
        model.denoise_fn.final_conv.block[3].bias.zero_()

    ckpt = save_random_model(tmp_path / "zero.pt", step=1, edit=zero, sets=[*PX32, "diffusion.prediction=eps"])
    result = _heldout(capsys, ckpt, shards, tmp_path / "zero.json", "--draws", 16, "--split", "test", "--seed", 5)
    keys = heldout.split_keys(shards, "test")
    draws = heldout.make_draws(keys, count=16, seed=5, max_views=3, n_timestep=100)
    want = [heldout.draw_noise(d, (3, 32, 32)).pow(2).mean().item() for d in draws]
    assert result["per_draw"]["eps_mse"] == pytest.approx(want, rel=1e-6)
    assert result["loss"] == "eps_mse" and "v_mse" not in result
    assert result["draws_sha256"] == heldout.draws_sha256(draws)


@pytest.mark.slow
def test_a_trained_model_ranks_above_its_perturbed_weights(trained, shards, tmp_path, capsys, one_thread):
    ckpt = checkpoint.load(trained)
    torch.manual_seed(0)
    noisy = {k: v + 0.3 * v.std() * torch.randn_like(v) if v.is_floating_point() and v.numel() > 1
             and k.startswith("denoise_fn.") else v for k, v in ckpt["model"].items()}
    checkpoint.save(tmp_path / "noisy.pt", {**ckpt, "model": noisy})
    good = _heldout(capsys, trained, shards, tmp_path / "good.json", "--draws", 48, "--weights", "raw")
    same = _heldout(capsys, trained, shards, tmp_path / "same.json", "--draws", 48, "--weights", "raw")
    bad = _heldout(capsys, tmp_path / "noisy.pt", shards, tmp_path / "bad.json", "--draws", 48, "--weights", "raw")
    assert good["draws_sha256"] == bad["draws_sha256"]  # every checkpoint sees the same draws
    assert good["v_mse"] == same["v_mse"]
    diffs = [b - a for a, b in zip(good["per_draw"]["v_mse"], bad["per_draw"]["v_mse"])]
    assert sum(diffs) / len(diffs) > 3 * torch.tensor(diffs).std().item() / len(diffs) ** 0.5  # paired
    assert good["v_mse"]["mean"] < bad["v_mse"]["mean"] and good["eps_mse"]["mean"] < bad["eps_mse"]["mean"]
    ema = _heldout(capsys, trained, shards, tmp_path / "ema.json", "--draws", 48)
    assert ema["weights"] == "ema" and ema["weights_sha256"] != good["weights_sha256"]
    assert load(trained)["step"] == good["step"] == 30


@pytest.mark.parametrize("flags, message", [
    (["--draws", "0"], "--draws 0: must be in 1..1,000,000"),
    (["--draws", "10000000000000"], "--draws 10000000000000: must be in 1..1,000,000"),
    (["--seed", "-1"], "--seed -1: must be in 0..2^63-1"),
    (["--seed", str(2**63)], f"--seed {2**63}: must be in 0..2^63-1"),
    (["--views", "24"], "--views 24: must be in 1..23"),
    (["--max-views", "0"], "--max-views 0: must be in 1..23"),
    (["--views", "2", "--max-views", "3"], "--views and --max-views exclude each other"),
    (["--shuffle-prob", "1.5"], "--shuffle-prob 1.5: must be a probability"),
    (["--timestep", "100"], "--timestep 100: the model's schedule has timesteps 0..99"),
    (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["--split", "nope"], "--split 'nope': "),
    (["--row-batch", "0"], "--row-batch 0: must be at least 1"),
])
def test_bad_flags_are_one_line_errors(shards, tmp_path, capsys, flags, message):
    ckpt = save_random_model(tmp_path / "m.pt", step=1, sets=PX32)
    code, _, err = _run(capsys, "--checkpoint", ckpt, "--shards", shards, *flags)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_missing_checkpoint_and_wrong_image_size_are_one_line_errors(shards, tmp_path, capsys):
    code, _, err = _run(capsys, "--checkpoint", tmp_path / "none.pt", "--shards", shards)
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    ckpt = save_random_model(tmp_path / "m64.pt", step=1)
    code, _, err = _run(capsys, "--checkpoint", ckpt, "--shards", shards)
    assert code == 2 and "holds 32 px images" in err and "trained at 64 px" in err
