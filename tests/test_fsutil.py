"""fsutil: atomic writes fail cleanly on a full disk; names from data stay plain names."""

from __future__ import annotations

import pytest

from viewfusion.errors import ViewFusionError
from viewfusion.fsutil import atomic_write_bytes, plain_name, sha256_json


def test_full_disk_is_one_clear_error_and_leaves_nothing(full_disk):
    with pytest.raises(ViewFusionError, match=r"x\.bin: no space left"):
        atomic_write_bytes(full_disk / "x.bin", b"0" * 10_000_000)
    assert list(full_disk.iterdir()) == []  # no temp file, no half file


@pytest.mark.parametrize("name", ["02691156_abc-t03-v2-0", "a.b", "x+y", "A_1"])
def test_plain_names_pass(name):
    assert plain_name(name, "item") == name


@pytest.mark.parametrize("name", ["../../x", "/etc/passwd", "a/b", "..", ".hidden", "-rf", "", "a\\b",
                                  "a..b", "x\n", 5, None, "é"])
def test_paths_and_odd_names_are_refused(name):
    with pytest.raises(ViewFusionError, match="manifest m.json item"):
        plain_name(name, "manifest m.json item")


def test_sha256_json_ignores_key_order():
    assert sha256_json({"a": 1, "b": [1, 2]}) == sha256_json({"b": [1, 2], "a": 1})
    assert sha256_json({"a": 1}) != sha256_json({"a": 1.5})


def test_stale_temps_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    import os
    import socket
    import subprocess

    from viewfusion.fsutil import remove_stale_temps

    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    names = {f".a.png.tmp-{host}-{dead.pid}": False, f".b.png.tmp-{dead.pid}": False,
             f".c.png.tmp-{host}-{os.getpid()}": True, f".d.png.tmp-otherhost-{dead.pid}": True, "e.png": True}
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == 2
    assert {p.name for p in tmp_path.iterdir()} == {n for n, kept in names.items() if kept}
