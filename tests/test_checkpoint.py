"""Checkpoint files: round trip, atomic writes, clear errors, and the official import."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from model_utils import TINY_UNET, batch, tiny_model
from train_utils import flip_weight_bit

from viewfusion.cli import main as cli
from viewfusion.config import to_dict
from viewfusion.configfile import load_config
from viewfusion.errors import ViewFusionError
from viewfusion.model import checkpoint
from viewfusion.model.build import build_model
from viewfusion.model.checkpoint import load_official

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["model.image_size=32", "model.inner_channel=16", "model.channel_mults=[1, 2]",
         "model.norm_groups=8", "model.res_blocks=1", "diffusion.n_timestep=50"]


def small_config(tmp_path: Path, *extra: str) -> Path:
    """A YAML of a 32 px model with 16 channels (import-official --config takes a file)."""
    lines = [f"base: {ROOT / 'config/experiments/tiny.yaml'}", "name: small", "model:"]
    lines += [f"  {s.split('=')[0].split('.')[1]}: {s.split('=')[1]}" for s in SMALL if s.startswith("model.")]
    lines += ["diffusion:", "  n_timestep: 50"]
    lines += [f"  {s}" for s in extra]
    path = tmp_path / "small.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def trained_small(seed: int = 0, **variant):
    cfg = load_config(ROOT / "config/experiments/tiny.yaml",
                      SMALL + [f"model.{k}={str(v).lower()}" for k, v in variant.items()])
    torch.manual_seed(seed)
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    y0, cond = torch.rand(2, 3, 32, 32), torch.rand(2, 2, 3, 32, 32)
    y_ref = torch.rand(2, 3, 32, 32) if cfg.model.relative else None
    model.loss(y0, cond, torch.tensor([1, 2]), torch.tensor([0.0, 1.0]), y_ref=y_ref).backward()
    opt.step()
    return cfg, model, opt


def ckpt_dict(cfg, model, opt, step=7):
    return {"format": checkpoint.FORMAT, "format_version": checkpoint.FORMAT_VERSION,
            "model": model.state_dict(), "optimizer": opt and opt.state_dict(), "scheduler": None,
            "ema": None, "step": step, "config": to_dict(cfg),
            "rng": [{"torch": torch.get_rng_state()}], "world_size": 1}


def test_round_trip_is_bit_exact_and_atomic(tmp_path):
    cfg, model, opt = trained_small()
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    checkpoint.save(path, ckpt_dict(cfg, model, opt))
    checkpoint.save(path, ckpt_dict(cfg, model, opt, step=8))  # overwrites in place
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temp file left
    back = checkpoint.load(path)
    assert back["step"] == 8 and back["config"] == to_dict(cfg)
    for k, v in model.state_dict().items():
        assert torch.equal(back["model"][k], v), k
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    loaded, cfg2, _ = checkpoint.load_model(path)
    assert cfg2 == cfg and not loaded.training


def _with_ema(cfg, model):
    """A checkpoint dict whose EMA weights differ from its raw ones (each stored on its own)."""
    ema = {k: v * 0.5 if v.is_floating_point() else v.clone() for k, v in model.state_dict().items()}
    return {**ckpt_dict(cfg, model, None), "ema": {"decay": 0.9, "n_averaged": 1, "model": ema}}


def test_save_stamps_the_weights_and_every_load_refuses_flipped_bytes(tmp_path):
    """torch.load checks no CRC: a flipped bit in a tensor used to load and sample."""
    cfg, model, _ = trained_small()
    good = tmp_path / "good.pt"
    checkpoint.save(good, _with_ema(cfg, model))
    raw = torch.load(good, weights_only=True)
    assert raw["weights_sha256"] == checkpoint.weights_sha256(model.state_dict())
    assert raw["ema"]["weights_sha256"] == checkpoint.weights_sha256(raw["ema"]["model"])
    checkpoint.load_model(good, ema=True)  # intact: loads
    for what, ema in (("model", False), ("EMA", True)):
        bad = tmp_path / f"flipped-{what}.pt"
        bad.write_bytes(good.read_bytes())
        flip_weight_bit(bad, ema=ema)
        line = f"the {what} weights do not match the sha256 stamped when the file was saved"
        for load in (checkpoint.load, checkpoint.load_model, load_official):
            with pytest.raises(ViewFusionError, match=rf"^{re.escape(str(bad))}: {line}"):
                load(bad)
        with pytest.raises(ViewFusionError, match=f"^the given state dict: {line}"):
            load_official(checkpoint.read(bad))  # a dict of ours in memory


def test_files_saved_before_the_stamp_still_load_unverified(tmp_path):
    """The documented choice for old files (docs/FORMATS.md): nothing to compare with, so they
    load as before, their weights fingerprinted as loaded."""
    cfg, model, _ = trained_small()
    old = tmp_path / "old.pt"
    torch.save(_with_ema(cfg, model), old)  # what save() wrote before it stamped
    flip_weight_bit(old)
    loaded, _, ckpt = checkpoint.load_model(old)
    assert "weights_sha256" not in ckpt
    name = "denoise_fn.downs.0.weight"
    assert not torch.equal(loaded.state_dict()[name], model.state_dict()[name])  # the flipped bit, loaded


def test_save_refuses_an_incomplete_dict(tmp_path):
    with pytest.raises(ValueError, match="lacks"):
        checkpoint.save(tmp_path / "x.pt", {"model": {}})


def test_truncated_file_gives_a_clear_error(tmp_path):
    cfg, model, opt = trained_small()
    good = tmp_path / "good.pt"
    checkpoint.save(good, ckpt_dict(cfg, model, opt))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ViewFusionError, match=r"bad\.pt is not a PyTorch checkpoint .*truncated"):
        checkpoint.load(bad)


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint at all", r"is not a PyTorch checkpoint"),
    ([1, 2, 3], r"is not a viewfusion checkpoint: it holds list"),
    ({"weights": torch.zeros(1)}, r"is not a viewfusion checkpoint: it holds a dict with keys \['weights'\]"),
    ({"model": {}, "it": 3}, r"is an official ViewFusion checkpoint .*import-official"),
    ({"format": checkpoint.FORMAT, "format_version": 99}, r"format_version 99"),
])
def test_non_checkpoints_are_named(tmp_path, content, message):
    path = tmp_path / "thing.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ViewFusionError, match=message):
        checkpoint.load(path)


def test_pickled_objects_are_refused_not_executed(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "x": Path("/")}, path)  # a non-allowlisted global
    with pytest.raises(ViewFusionError, match=r"cannot be read as a checkpoint"):
        checkpoint.load(path)
    with pytest.raises(ViewFusionError, match="does not exist"):
        checkpoint.load(tmp_path / "missing.pt")


def fake_official(tmp_path: Path, model, opt, *, ddp_prefix: bool) -> Path:
    """The official file layout: model, optimizer, it, t, run_id and numpy psnr/ssim."""
    state = model.state_dict()
    if ddp_prefix:
        state = {f"module.{k}": v for k, v in state.items()}
    path = tmp_path / "best_model_all.pt"
    torch.save({"model": state, "optimizer": opt.state_dict(), "it": 710000, "t": 5.6e5,
                "run_id": "abc123", "psnr": np.float64(23.5), "ssim": np.float32(0.88)}, path)
    return path


@pytest.mark.parametrize("ddp_prefix", [False, True])
def test_import_official_runs_the_weights_unchanged(tmp_path, ddp_prefix):
    _, model, opt = trained_small()
    src = fake_official(tmp_path, model, opt, ddp_prefix=ddp_prefix)
    out = tmp_path / "imported.pt"
    assert cli(["import-official", str(src), str(out), "--config", str(small_config(tmp_path))]) == 0
    ckpt = checkpoint.load(out)
    assert ckpt["step"] == 710000 and ckpt["imported_from"]["psnr"] == 23.5
    assert ckpt["optimizer"] is not None and ckpt["rng"] is None
    imported, _, _ = checkpoint.load_model(out)
    model.eval()
    torch.manual_seed(1)
    args = (torch.rand(2, 3, 32, 32), torch.rand(2, 3, 3, 32, 32), torch.tensor([3, 1]), torch.tensor([0.5, 2.0]))
    with torch.no_grad():
        want = model.reverse_step_mean(*args, t=10)
        got = imported.reverse_step_mean(*args, t=10)
    assert all(torch.equal(a, b) for a, b in zip(want, got))


def test_import_official_checks_the_variant(tmp_path):
    _, model, opt = trained_small(weighting=False)
    src = fake_official(tmp_path, model, opt, ddp_prefix=False)
    assert checkpoint.detect_variant(model.state_dict()) == "no_weighting"
    with pytest.raises(ViewFusionError, match="shapes are those of the 'no_weighting' variant"):
        checkpoint.convert_official(checkpoint.read(src, numpy_scalars=True), variant="paper")
    # the small weights do not fit the paper architecture: a clear error, not a traceback
    res = subprocess.run([sys.executable, "-m", "viewfusion.cli", "import-official", str(src),
                          str(tmp_path / "o.pt")], capture_output=True, text=True, check=False)
    assert res.returncode == 2 and "(config 'no_weighting'): weights do not fit the model" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.pt").exists()


def test_import_official_refuses_our_own_format(tmp_path):
    cfg, model, opt = trained_small()
    path = tmp_path / "ours.pt"
    checkpoint.save(path, ckpt_dict(cfg, model, opt))
    assert cli(["import-official", str(path), str(tmp_path / "o.pt")]) == 2


def saved_with(tmp_path: Path, edit) -> Path:
    """A small checkpoint of ours, `edit(ckpt)` applied before saving."""
    cfg, model, opt = trained_small()
    ckpt = ckpt_dict(cfg, model, opt)
    edit(ckpt)
    path = tmp_path / "edited.pt"
    checkpoint.save(path, ckpt)
    return path


def _drop_gammas(ckpt):
    del ckpt["model"]["gammas"]


def _add_key(ckpt):
    ckpt["model"]["extra.weight"] = torch.zeros(2)


def _wider_config(ckpt):
    ckpt["config"]["model"]["inner_channel"] = 32


def _longer_schedule(ckpt):
    ckpt["config"]["diffusion"]["n_timestep"] = 60


def _no_weighting_config(ckpt):
    ckpt["config"]["model"]["weighting"] = False


@pytest.mark.parametrize("edit, message", [
    (_drop_gammas, r"1 missing: gammas\)"),
    (_add_key, r"1 unexpected: extra\.weight\)"),
    (_wider_config, (r"123 of another shape \(file vs model\): denoise_fn\.noise_level_mlp\.0\.weight \[64, 16\] "
                     r"vs \[128, 32\], .*, \.\.\.\)")),
    (_longer_schedule, r"6 of another shape \(file vs model\): gammas \[50\] vs \[60\], "),
    (_no_weighting_config, r"denoise_fn\.final_conv\.block\.3\.weight \[6, 16, 3, 3\] vs \[3, 16, 3, 3\]"),
])
def test_weights_that_do_not_fit_their_config_are_named(tmp_path, edit, message):
    """What sampling loads (load_model): a clear one-line error naming the file and the first
    mismatched keys, not torch's multi-line RuntimeError."""
    path = saved_with(tmp_path, edit)
    with pytest.raises(ViewFusionError, match=r"edited\.pt \(config 'tiny'\): weights do not fit the model") as err:
        checkpoint.load_model(path)
    assert "\n" not in str(err.value)
    assert re.search(message, str(err.value)), str(err.value)


def test_ema_weights_are_loaded_strictly_too(tmp_path):
    def ema_without_a_buffer(ckpt):
        ema = {k: v.clone() for k, v in ckpt["model"].items() if k != "posterior_mean_coef1"}
        ckpt["ema"] = {"decay": 0.999, "n_averaged": 3, "model": ema}

    path = saved_with(tmp_path, ema_without_a_buffer)
    checkpoint.load_model(path)  # the raw weights fit
    with pytest.raises(ViewFusionError, match=r"edited\.pt \(EMA weights, config 'tiny'\): .*"
                                              r"1 missing: posterior_mean_coef1"):
        checkpoint.load_model(path, ema=True)


def test_load_state_refuses_what_is_not_a_state_dict(tmp_path):
    cfg, model, _ = trained_small()
    with pytest.raises(ViewFusionError, match=r"x\.pt: the weights are not a state dict .* but list"):
        checkpoint.load_state(model, [1, 2], source="x.pt")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ViewFusionError, match="1 missing: gammas"):
        checkpoint.load_state(model, {k: v * 0 for k, v in before.items() if k != "gammas"}, source="x.pt")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # nothing half-loaded
    path = tmp_path / "edited.pt"
    torch.save({k: v for k, v in ckpt_dict(cfg, model, None).items() if k != "config"}, path)
    with pytest.raises(ViewFusionError, match=r"edited\.pt: checkpoint lacks the keys \['config'\]"):
        checkpoint.load_model(path)


def test_a_full_disk_while_saving_is_one_clear_line(full_disk):
    """torch.save on a full disk raises 'unexpected pos ...' (a RuntimeError, its OSError lost);
    save must say which file and what to do, and leave nothing under the real name."""
    cfg, model, opt = trained_small()
    ckpt = ckpt_dict(cfg, model, opt)
    assert sum(t.numel() * t.element_size() for t in ckpt["model"].values()) > 256 * 1024
    path = full_disk / "checkpoints" / "last.pt"
    with pytest.raises(ViewFusionError, match=r"last\.pt: .*(no space left|full disk).*free space and rerun") as err:
        checkpoint.save(path, ckpt)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not path.exists() and list(path.parent.iterdir()) == []  # no temp file either


def test_weights_sha256_is_the_weights_not_the_file(tmp_path):
    cfg, model, opt = trained_small()
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    checkpoint.save(a, ckpt_dict(cfg, model, opt, step=7))
    checkpoint.save(b, {**ckpt_dict(cfg, model, None, step=9), "rng": None})  # other step, no optimizer
    assert a.read_bytes() != b.read_bytes()
    fingerprint = checkpoint.weights_sha256(checkpoint.load(a)["model"])
    assert fingerprint == checkpoint.weights_sha256(checkpoint.load(b)["model"])
    assert fingerprint == checkpoint.weights_sha256(dict(reversed(model.state_dict().items())))  # order-free
    changed = {k: v.clone() for k, v in model.state_dict().items()}
    changed["denoise_fn.downs.0.bias"][3] += 1e-6
    assert checkpoint.weights_sha256(changed) != fingerprint
    renamed = {("x." + k if k == "gammas" else k): v for k, v in model.state_dict().items()}
    assert checkpoint.weights_sha256(renamed) != fingerprint


def test_weights_sha256_covers_dtype_and_shape_and_is_stable():
    values = torch.arange(4, dtype=torch.float32)
    base = checkpoint.weights_sha256({"w": values})
    assert checkpoint.weights_sha256({"w": values.double()}) != base
    assert checkpoint.weights_sha256({"w": values.reshape(2, 2)}) != base
    strided = torch.stack([values, torch.zeros(4)], dim=1)[:, 0]  # same values, not contiguous
    assert checkpoint.weights_sha256({"w": strided}) == base
    # Artefacts store this fingerprint: a change of the recipe would orphan all of them.
    mixed = {"a": torch.arange(3, dtype=torch.float32), "b": torch.tensor(2.5, dtype=torch.bfloat16)}
    assert checkpoint.weights_sha256(mixed) == "4e2320258d561596c8324efc35e13cfc1962b460ee704f7cce61bb0cfff2d642"


def test_load_official_round_trip_and_errors(tmp_path):
    model = tiny_model(weighting=False)
    path = tmp_path / "official.pt"
    torch.save({"model": model.state_dict(), "it": 1}, path)  # the official layout, not ours
    loaded = load_official(path, TINY_UNET)
    assert not loaded.weighting and loaded.denoiser.config["out_channel"] == 3
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value)
    bare = load_official(model.state_dict(), TINY_UNET, weighting=False)
    assert bare.num_timesteps == 2000
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    for bad, match in [(truncated, r"truncated\.pt is not a PyTorch checkpoint .*truncated"),
                       (tmp_path / "missing.pt", "does not exist")]:
        with pytest.raises(ViewFusionError, match=match):
            load_official(bad, TINY_UNET)
    with pytest.raises(ViewFusionError, match="neither"):
        load_official({"model": 3, "x": "y"}, TINY_UNET)
    with pytest.raises(ViewFusionError, match=r"\(unet_kwargs .*\): weights do not fit the model .* of another shape"):
        load_official(model.state_dict(), {**TINY_UNET, "inner_channel": 32})
    # our format without its config is refused, never given the official settings
    torch.save({"format": "viewfusion-checkpoint", "model": model.state_dict(), "step": 1}, path)
    with pytest.raises(ViewFusionError, match=r"official\.pt: checkpoint format_version None"):
        load_official(path, TINY_UNET)


def tiny_v_checkpoint(path):
    """A checkpoint of ours whose config differs from the official settings where sampling
    notices: v-prediction, no clamp, a 50-step cosine schedule."""
    from viewfusion.config import from_dict, to_dict
    from viewfusion.model import checkpoint
    from viewfusion.model.build import build_model

    cfg = from_dict({"name": "tiny_v", "model": {
        "image_size": 16, "inner_channel": 8, "channel_mults": [1, 2], "attn_res": [8], "res_blocks": 1,
        "norm_groups": 4, "clamp": None}, "diffusion": {"prediction": "v", "schedule": "cosine", "n_timestep": 50}})
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.denoiser.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # no zero-initialised layer hides the output
    checkpoint.save(path, {"format": checkpoint.FORMAT, "format_version": checkpoint.FORMAT_VERSION,
                           "model": model.state_dict(), "optimizer": None, "scheduler": None, "ema": None,
                           "step": 3, "config": to_dict(cfg), "rng": None, "world_size": None})
    return cfg


def test_load_official_builds_our_checkpoint_from_its_own_config(tmp_path):
    """It used to wrap a v-prediction model in the official eps/clamp settings: samples off by up
    to 1.0. Now it samples exactly as checkpoint.load_model, whose config it uses."""
    from viewfusion.model import checkpoint
    path = tmp_path / "ours.pt"
    cfg = tiny_v_checkpoint(path)
    want, _, ckpt = checkpoint.load_model(path)
    _, y_cond, angle, _ = batch(b=2, n=3)
    view_count = torch.tensor([3, 1])
    expected = want.generate(y_cond, view_count, angle, sampler="ddim", steps=2, seeds=[1, 2])
    official_settings = copy.deepcopy(want)  # what it used to build around these weights
    official_settings.prediction, official_settings.clamp = "eps", (-1.0, 1.0)
    old = official_settings.generate(y_cond, view_count, angle, sampler="ddim", steps=2, seeds=[1, 2])
    assert (old - expected).abs().max() > 0.5
    for got in (load_official(path), load_official(path, cfg.model.unet_kwargs(), True, clamp=None),
                load_official(ckpt)):
        assert (got.prediction, got.clamp, got.training) == ("v", None, False)
        assert torch.equal(got.generate(y_cond, view_count, angle, sampler="ddim", steps=2, seeds=[1, 2]), expected)


@pytest.mark.parametrize("args, kwargs, named", [
    (({"inner_channel": 16, "res_blocks": 1},), {}, r"unet_kwargs\['inner_channel'\]=16, its config: 8"),
    ((None, False), {"clamp": None}, r"weighting=False, its config: True"),
    ((), {"clamp": (-1, 1)}, r"clamp=\(-1.0, 1.0\), its config: None"),
    (({"channels_last": False},), {}, r"unet_kwargs\['channels_last'\]=False, its config: 'not set'"),
])
def test_load_official_refuses_arguments_that_contradict_our_checkpoint(tmp_path, args, kwargs, named):
    path = tmp_path / "ours.pt"
    tiny_v_checkpoint(path)
    with pytest.raises(ViewFusionError, match=r"ours\.pt is a viewfusion checkpoint with its own config 'tiny_v', "
                                              rf"which the arguments contradict \({named}\); leave them out, "
                                              r"or load it with viewfusion\.model\.checkpoint\.load_model$"):
        load_official(path, *args, **kwargs)
