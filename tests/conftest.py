"""Shared fixtures. Data fixtures (`synth_zip`, `synth_shards`, `edit_zip`) are session-scoped
and small: 26 synthetic objects (2 per category), so the whole data suite stays fast."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

SYNTH_OBJECTS = 26
SYNTH_SEED = 0


@pytest.fixture(scope="module")
def one_thread():
    """Small models gain nothing from intra-op threads, and on a shared 2-core machine OpenMP
    threads spinning against other processes make them 10-30x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synth_zip(tmp_path_factory) -> Path:
    """A synthetic NMR_Dataset.zip: 26 objects at 64 px, seed 0 (18 train, 3 val, 5 test)."""
    from viewfusion.data.synth import write_synth_zip

    path = tmp_path_factory.mktemp("synth") / "NMR_Dataset.zip"
    write_synth_zip(path, objects=SYNTH_OBJECTS, seed=SYNTH_SEED, workers=1)
    return path


@pytest.fixture(scope="session")
def synth_shards(synth_zip, tmp_path_factory) -> Path:
    """`synth_zip` sharded with --shards 2 (2 train, 2 val, 2 test shards)."""
    from viewfusion.data.shard import write_shards

    out = tmp_path_factory.mktemp("shards") / "shards"
    write_shards(synth_zip, out, shards=2, gpus=2)
    return out


@pytest.fixture(scope="session")
def edit_zip():
    """edit_zip(src, dst, drop=(), replace={}, add={}) copies a zip member by member, dropping
    names that end with anything in `drop`, replacing (name suffix -> bytes) and adding."""

    def edit(src: Path, dst: Path, *, drop=(), replace=None, add=None) -> Path:
        replace, add = replace or {}, add or {}
        with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
            for info in zin.infolist():
                if any(info.filename.endswith(suffix) for suffix in drop):
                    continue
                data = zin.read(info)
                for suffix, new in replace.items():
                    if info.filename.endswith(suffix):
                        data = new
                zout.writestr(info, data)
            for name, data in add.items():
                zout.writestr(zipfile.ZipInfo(name), data)
        return dst

    return edit


@pytest.fixture
def full_disk(tmp_path) -> Path:
    """A real, nearly full filesystem: a 256 KiB tmpfs mounted at tmp_path/full (root only;
    skipped elsewhere). Writes past its size fail with ENOSPC as on a full cluster disk."""
    import os
    import subprocess

    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                                           capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
