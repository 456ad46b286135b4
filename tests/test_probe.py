"""`viewfusion probe`: its conditioning probe tells a model that ignores its views from one that
does not, and its sample statistics are the tables' PSNR."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from train_utils import save_random_model

from viewfusion import cli
from viewfusion.data.manifest import make_manifest
from viewfusion.errors import ViewFusionError
from viewfusion.fsutil import atomic_write_json
from viewfusion.workflow import probe


def _checkpoint(path: Path, *, blind: bool) -> Path:
    """A random-weight model; `blind` zeroes the first convolution's conditioning-view inputs."""
    def zero_view_inputs(model):
        model.denoise_fn.downs[0].weight[:, :3] = 0

    return save_random_model(path, step=3, edit=zero_view_inputs if blind else None)


@pytest.fixture(scope="module")
def manifest(synth_shards, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("probe") / "v2.json"
    atomic_write_json(path, make_manifest(synth_shards, split="test", view_count=2, seed=0, max_objects=4))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("blind", [False, True])
def test_probe_separates_blind_and_seeing_models(blind, manifest, synth_shards, tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "model.pt", blind=blind)
    grid = tmp_path / "grid.png"
    assert cli.main(["probe", "--checkpoint", str(ckpt), "--manifest", str(manifest), "--shards",
                     str(synth_shards), "--levels", "99,1", "--seeds", "2", "--steps", "3",
                     "--grid", str(grid)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["targets"] == 4 and out["step"] == 3
    top, low = out["x0"]["99"], out["x0"]["1"]
    assert all(math.isfinite(level["loss"]) and level["loss"] > 0 for level in (top, low))
    # One column per target; rows: 2 views, the ground truth, the x0 estimate, one sample.
    with Image.open(grid) as im:
        size = im.size
    assert size == (4 * 64, 5 * 64)
    if blind:
        assert top["cond"] == top["other_cond"] and low["cond"] == low["other_cond"]
    else:
        assert top["cond"] != top["other_cond"]
    # Nearly clean inputs give a far better estimate than pure noise, whatever the weights.
    assert low["cond"] > top["cond"] + 10
    samples = out["samples"]
    assert len(samples["psnr_per_seed"]) == 2 and samples["psnr_per_seed"][0] != samples["psnr_per_seed"][1]
    assert all(math.isfinite(v) for v in [*samples["psnr_per_seed"], samples["psnr_of_mean"], out["copy_baseline"]])


@pytest.mark.parametrize("flags, message", [
    (["--levels", "100"], "0..99"),
    (["--levels", "99,x"], "comma-separated integer"),
    (["--seeds", "-1"], "--seeds -1"),
    (["--steps", "0"], "--steps 0"),
])
def test_probe_refuses_bad_input_in_one_line(flags, message, manifest, synth_shards, tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "model.pt", blind=False)
    assert cli.main(["probe", "--checkpoint", str(ckpt), "--manifest", str(manifest), "--shards",
                     str(synth_shards), "--seeds", "0", *flags]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err
    assert captured.err.startswith("viewfusion probe: error: ") and captured.err.count("\n") == 1


def test_probe_function_raises_the_package_error(manifest, synth_shards, tmp_path):
    ckpt = _checkpoint(tmp_path / "model.pt", blind=False)
    with pytest.raises(ViewFusionError, match="0..99"):
        probe.probe(checkpoint=str(ckpt), manifest=str(manifest), shards=str(synth_shards),
                    levels=[100], seeds=0, steps=3)


def test_psnr_is_the_mean_of_per_image_psnr():
    a = torch.zeros(2, 3, 4, 4)
    b = torch.stack([torch.full((3, 4, 4), 0.1), torch.full((3, 4, 4), 0.01)])
    assert probe.psnr(a, b) == pytest.approx((20 + 40) / 2, abs=1e-3)
