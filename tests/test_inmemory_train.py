"""tools/inmemory_train.py (the quick experiments of docs/NOTES.md): trains with the config's
view selection, prints its evals as JSON lines and saves loadable state dicts."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

from train_utils import SAMPLE_SMALL, TINY
from viewfusion.config import build_model, load_config
from viewfusion.data.manifest import make_manifest
from viewfusion.fsutil import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import inmemory_train  # noqa: E402


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
