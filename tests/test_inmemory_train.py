"""tools/inmemory_train.py (the quick experiments of docs/NOTES.md): trains with the config's
view selection, prints its evals as JSON lines and saves loadable state dicts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import inmemory_train
import pytest
import torch
from train_utils import SAMPLE_SMALL, TINY

from viewfusion.configfile import load_config
from viewfusion.data.manifest import make_manifest
from viewfusion.data.nmr import view_distance
from viewfusion.fsutil import atomic_write_json
from viewfusion.model.build import build_model

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_inmemory_train_evaluates_and_saves(synth_shards, tmp_path, capsys):
    manifest = tmp_path / "v2.json"
    atomic_write_json(manifest, make_manifest(synth_shards, split="test", view_count=2, seed=0, max_objects=3))
    sets = [*SAMPLE_SMALL, "data.self_view_prob=1.0", "train.global_batch_size=2", "train.warmup_steps=2"]
    argv = ["--config", str(TINY), "--shards", str(synth_shards), "--manifest", str(manifest),
            "--steps", "4", "--eval-every", "2", "--save", str(tmp_path / "run.pt")]
    for item in sets:
        argv += ["--set", item]
    assert inmemory_train.main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["step"] for line in lines] == [2, 4]
    for line in lines:
        assert all(math.isfinite(line[k]) for k in ("loss", "x0_top", "ddim50", "copy"))
        assert 5 < line["copy"] < 60 and line["eta"] == 1.0
    saved = torch.load(tmp_path / "run.pt", weights_only=True)
    model = build_model(load_config(TINY, saved["set"]))
    model.load_state_dict(saved["ema"], strict=True)
    assert any((saved["ema"][k] != saved["raw"][k]).any() for k in saved["raw"] if saved["raw"][k].is_floating_point())


def test_draw_batch_near_views_and_relative_angle():
    import numpy as np

    images = torch.arange(5 * 24, dtype=torch.float32).view(5, 24, 1, 1, 1).expand(5, 24, 3, 2, 2)
    cfg = load_config(TINY, ["train.global_batch_size=64", "model.relative=true"])
    (y_0, y_cond, count, angle), extra = inmemory_train.draw_batch(
        images, np.random.default_rng(0), cfg, self_view_prob=1.0, near=2)
    target = y_0[:, 0, 0, 0].long() % 24
    views = y_cond[:, :, 0, 0, 0].long() % 24
    # Every sample holds a view within 2 steps of its target (near=2, probability 1).
    assert all(min(view_distance(int(t), int(v)) for v in row[:n]) <= 2 for t, row, n in zip(target, views, count))
    assert any(min(view_distance(int(t), int(v)) for v in row[:n]) > 0 for t, row, n in zip(target, views, count))
    # Relative variant: the reference is the first view and the angle is taken from it.
    assert torch.equal(extra["y_ref"], y_cond[:, 0])
    expected = torch.tensor([((t - r) % 24) * 2 * np.pi / 24 for t, r in zip(target, views[:, 0])])
    assert torch.allclose(angle, expected.float(), atol=1e-5)


def test_learning_rate_is_the_trainers_unless_annealed():
    from viewfusion.train.state import lr_factor

    tc = load_config(TINY).train
    steps = [0, 1, tc.warmup_steps - 1, tc.warmup_steps, 1000, 1499]
    assert [inmemory_train.lr_factor(s, tc, 1500, False) for s in steps] == [lr_factor(s, tc) for s in steps]
    annealed = [inmemory_train.lr_factor(s, tc, 1500, True) for s in (0, tc.warmup_steps, 1500)]
    assert annealed == [lr_factor(0, tc), 1.0, 0.0]
