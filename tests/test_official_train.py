"""benchmarks/official_train.py hands the official trainer the issue's settings (the run itself
needs a checkout of bronemos/view-fusion, which CI does not have: docs/NOTES.md has its figures)."""

from __future__ import annotations

from pathlib import Path

import official_train

from viewfusion.configfile import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_the_official_config_carries_the_issues_settings(tmp_path):
    cfg = load_config(ROOT / "config/experiments/tiny.yaml", official_train.BASE)
    got = official_train.official_config(cfg, tmp_path, 2, 1500)
    # Its loop steps it = 0, 1, ... and exits after the step with it > max_it: 1500 steps.
    assert got["model"]["max_it"] == 1498 and got["model"]["validate_from"] > 1500
    assert got["model"]["denoise_net_params"] == cfg.model.unet_kwargs()
    assert got["model"]["denoise_net_params"]["inner_channel"] == 16
    assert got["model"]["view_fusion_params"]["beta_schedule"]["train"] == {
        "schedule": "linear", "num_timesteps": 2000, "linear_start": 1e-6, "linear_end": 1e-2}
    data = got["data"]["params"]
    assert (data["batch_size"], data["max_views"], got["lr_warmup"]) == (8, 3, 100)
    # dataset_prep.py -sc 2 writes shards 00 and 01 (and an overflow shard that is never read).
    assert (data["train"]["params"]["start_shard"], data["train"]["params"]["end_shard"]) == (0, 1)
    assert cfg.diffusion.prediction == "eps" and cfg.train.lr == 1e-3
