"""`viewfusion sample`: chunking and batch size never change the PNGs, a killed chunk resumes
without redoing or losing items, and the completion marker appears only when a chunk is done."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from train_utils import save_random_model
from viewfusion.data.manifest import make_manifest
from viewfusion.fsutil import atomic_write_json
from viewfusion.sample import SamplerSpec, chunk_items, sample_chunk

REPO = Path(__file__).resolve().parents[1]
SPEC = SamplerSpec("ddim", 4)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    # A small random-weight model is enough: determinism does not depend on training.
    return save_random_model(tmp_path_factory.mktemp("ckpt") / "model.pt", step=7)


@pytest.fixture(scope="module")
def manifest(synth_shards, tmp_path_factory) -> Path:
    """Mixed view counts in one manifest, so batches mix them."""
    items = []
    for views in (1, 3):
        items += make_manifest(synth_shards, split="test", view_count=views, seed=0, targets_per_object=1)["items"]
    path = tmp_path_factory.mktemp("manifest") / "mixed.json"
    atomic_write_json(path, {"split": "test", "seed": 0, "view_count": None, "source": "random", "items": items})
    return path


def _pngs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "images").glob("*.png"))}


def test_chunk_items_partition_the_manifest():
    items = [{"item": str(k)} for k in range(10)]
    parts = [chunk_items(items, i, 3) for i in (1, 2, 3)]
    assert [len(p) for p in parts] == [3, 4, 3]
    assert sum(parts, []) == items


def test_chunking_and_batch_size_give_identical_pngs(ckpt, manifest, synth_shards, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    sample_chunk(checkpoint=ckpt, manifest=manifest, shards=synth_shards, out=whole, chunk="1/1",
                 spec=SPEC, batch_size=16, device="cpu")
    for i in (1, 2, 3):
        sample_chunk(checkpoint=ckpt, manifest=manifest, shards=synth_shards, out=split, chunk=f"{i}/3",
                     spec=SPEC, batch_size=1, device="cpu")
    a, b = _pngs(whole), _pngs(split)
    assert len(a) == len(json.loads(manifest.read_text())["items"]) == 10
    assert a == b
    marker = json.loads((split / "chunks/2-of-3.json").read_text())
    assert marker["checkpoint_step"] == 7 and marker["steps"] == 4 and marker["seconds_per_target"] > 0
    assert marker["row_batch"] == 8  # the CPU default: images depend on it, so it is recorded
    assert marker["max_train_views"] == 3  # the tiny config's data.max_views: tables mark more as extrapolation
    assert sorted(p.name for p in (split / "chunks").glob("*-of-3.json")) == ["1-of-3.json", "2-of-3.json", "3-of-3.json"]


def test_killed_chunk_resumes_without_redoing_or_losing(ckpt, manifest, synth_shards, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "viewfusion.cli", "sample", "--checkpoint", str(ckpt), "--manifest", str(manifest),
           "--shards", str(synth_shards), "--out", str(out), "--chunk", "1/1", "--sampler", "ddim",
           "--steps", "40", "--batch-size", "1", "--device", "cpu"]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while len(list((out / "images").glob("*.png"))) < 2 and time.time() < deadline:
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    first = {p.name: p.stat().st_mtime_ns for p in (out / "images").glob("*.png")}
    assert 2 <= len(first) < 10, "the kill should land half-way"
    assert not (out / "chunks/1-of-1.json").exists(), "a killed chunk must not look complete"
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True)
    after = {p.name: p.stat().st_mtime_ns for p in (out / "images").glob("*.png")}
    assert len(after) == 10 and (out / "chunks/1-of-1.json").exists()
    assert all(after[name] == mtime for name, mtime in first.items()), "finished items were redone"


def test_bad_chunk_and_missing_checkpoint_are_clear_errors(manifest, synth_shards, tmp_path):
    from viewfusion.cli import main

    base = ["sample", "--manifest", str(manifest), "--shards", str(synth_shards), "--out", str(tmp_path / "o")]
    assert main([*base, "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert main([*base, "--checkpoint", str(tmp_path / "nope.pt"), "--chunk", "4/3"]) == 2
    assert not (tmp_path / "o" / "chunks").exists()


def test_nearest_baseline_copies_the_closest_view_across_the_wrap(ckpt, synth_shards, tmp_path):
    """The copy baseline picks by circular azimuth distance: view 1 is 2 steps from view 23,
    view 20 is 3; ties go to the first listed view."""
    from viewfusion.data.loader import load_objects

    objects = load_objects(synth_shards, "test")
    key = sorted(objects)[0]
    cases = [(23, [20, 1]), (6, [9, 3]), (12, [12, 0])]  # -> 1, 9 (tie: first), 12
    items = [{"item": f"{key}_t{t}_v{len(c)}_{k}", "key": key, "target_view": t, "cond_views": c, "seed": k}
             for k, (t, c) in enumerate(cases)]
    manifest = tmp_path / "m.json"
    atomic_write_json(manifest, {"split": "test", "seed": 0, "view_count": None, "source": "random", "items": items})
    out = tmp_path / "nearest"
    sample_chunk(checkpoint=ckpt, manifest=manifest, shards=synth_shards, out=out,
                 spec=SamplerSpec("nearest", None), device="cpu")
    images = objects[key].images
    for it, view in zip(items, (1, 9, 12)):
        png = torch.from_numpy(np.array(Image.open(out / "images" / f"{it['item']}.png"))).permute(2, 0, 1)
        assert torch.equal(png, (images[view] * 255).round().to(torch.uint8))
    marker = json.loads((out / "chunks/1-of-1.json").read_text())
    assert marker["sampler"] == "nearest" and marker["steps"] == 0 and marker["checkpoint_step"] == 7
    assert marker["unet_evals_per_target"] == 0 and marker["max_train_views"] == 3
