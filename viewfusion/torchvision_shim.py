"""`viewfusion torchvision-shim`: make `import torchvision` work beside a CPU-only torch, only where it fails.

    viewfusion torchvision-shim .venv            # install if needed (idempotent)
    viewfusion torchvision-shim .venv --remove   # take it out again
    viewfusion torchvision-shim                  # the running interpreter's environment (sys.prefix)

Why: the registry's `torchvision==0.28.0` is a CUDA build. Beside the CPU `torch==2.13.0`,
`import torchvision` dies in `torchvision._meta_registrations` with `RuntimeError: operator
torchvision::nms does not exist`, and `import torchmetrics` and `import lpips` die with it. The
compiled ops (nms, roi_align, image decoding) are unusable either way, but the models (VGG16,
AlexNet) that LPIPS needs are plain Python and work once those two registration modules are
skipped.

What it does: probes `<venv>/bin/python -c "import torchvision"` with the shim disabled. Only if
that fails with the missing-operator error does it write
`<site-packages>/viewfusion_torchvision_shim.pth`, one line run at every interpreter start that
puts empty modules `torchvision._meta_registrations` and `torchvision._autograd_registrations`
into `sys.modules` (no torch import, so start-up cost is nil). Where torchvision imports fine
(a CUDA torch on a GPU machine) it installs nothing and removes a stale shim. The environment
variable `VIEWFUSION_NO_TORCHVISION_SHIM=1` disables an installed shim (that is how the probe
runs). Exit status: 0 when `import torchvision` works afterwards or torchvision is not installed,
1 when it still fails, 2 when VENV has no bin/python.

This module imports neither torch nor torchvision (it only probes them in a subprocess), so it
runs before, and whether or not, `import torchvision` works.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from viewfusion.errors import ViewFusionError

SHIM_NAME = "viewfusion_torchvision_shim.pth"
DISABLE_VAR = "VIEWFUSION_NO_TORCHVISION_SHIM"
# A .pth line starting with "import" is executed by site.py at start-up; it must be one line,
# and it runs inside a function, so no comprehension (its scope would not see the imports).
SHIM_LINE = (
    "import os, sys, types; n = ('torchvision._meta_registrations', 'torchvision._autograd_registrations'); "
    "os.environ.get('" + DISABLE_VAR + "') or sys.modules.update(zip(n, map(types.ModuleType, n)))\n"
)
MISSING_OP = "operator torchvision::"


def _python(venv: Path) -> Path:
    for name in ("python", "python3"):
        if (venv / "bin" / name).exists():
            return venv / "bin" / name
    raise ViewFusionError(f"{venv / 'bin' / 'python'} not found; pass the virtual environment's folder")


def _site_packages(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def _probe(python: Path, *, shim_enabled: bool) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop(DISABLE_VAR, None)
    if not shim_enabled:
        env[DISABLE_VAR] = "1"
    return subprocess.run([str(python), "-c", "import torchvision"], env=env, capture_output=True, text=True)


def _write(shim: Path) -> bool:
    """Write the shim atomically unless it is already there as it should be; whether it wrote."""
    if shim.exists() and shim.read_text() == SHIM_LINE:
        return False
    tmp = shim.with_name(f"{SHIM_NAME}.tmp-{os.getpid()}")
    tmp.write_text(SHIM_LINE)
    os.replace(tmp, shim)
    return True


def install(venv: Path) -> int:
    """Install the shim into `venv` only if `import torchvision` fails there without it."""
    python = _python(venv)
    shim = _site_packages(python) / SHIM_NAME
    bare = _probe(python, shim_enabled=False)
    if bare.returncode == 0:
        shim.unlink(missing_ok=True)
        print(f"torchvision imports without a shim in {venv}; nothing installed")
        return 0
    if "No module named 'torchvision'" in bare.stderr:
        print(f"torchvision is not installed in {venv}; nothing to do (LPIPS will be unavailable)")
        return 0
    if MISSING_OP not in bare.stderr:
        print(f"import torchvision fails for another reason; shim not installed:\n{bare.stderr}", file=sys.stderr)
        return 1
    written = _write(shim)
    check = _probe(python, shim_enabled=True)
    if check.returncode != 0:
        print(f"shim installed at {shim} but import torchvision still fails:\n{check.stderr}", file=sys.stderr)
        return 1
    done = "installed" if written else "already installed:"
    print(f"{done} {shim}: import torchvision works (compiled torchvision ops stay unavailable)")
    return 0


def remove(venv: Path) -> int:
    """Take the shim out of `venv` (nothing to do when it is not there)."""
    shim = _site_packages(_python(venv)) / SHIM_NAME
    shim.unlink(missing_ok=True)
    print(f"removed {shim}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("venv", type=Path, nargs="?", default=Path(sys.prefix),
                        help="virtual environment folder, e.g. .venv (default: this interpreter's, sys.prefix)")
    parser.add_argument("--remove", action="store_true", help="remove the shim if present")


def run(args: argparse.Namespace) -> int:
    return remove(args.venv) if args.remove else install(args.venv)
