"""The command line (issue 16, items 5 and 6): bad numbers and unknown commands are one line and
exit 2, help of a command group works, and nothing is written before the check fails."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from viewfusion.cli import COMMANDS, main, one_line
from viewfusion.data.loader import train_loader
from viewfusion.errors import ViewFusionError


def _refused(capsys, argv: list[str], flag: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and flag in err, err


@pytest.mark.parametrize(("flags", "flag"), [
    (["--views", "1", "--seed", "-1"], "--seed must be an integer >= 0, got -1"),
    (["--views", "0"], "--views must be in 1..23, got 0"),
    (["--views", "24"], "--views must be in 1..23, got 24"),
    (["--views", "1", "--targets-per-object", "0"], "--targets-per-object must be in 1..23, got 0"),
    (["--views", "1", "--targets-per-object", "-3"], "--targets-per-object must be in 1..23, got -3"),
    (["--views", "1", "--max-objects", "0"], "--max-objects must be positive, got 0"),
    (["--views", "1", "--max-objects", "-1"], "--max-objects must be positive, got -1"),
])
def test_data_manifest_refuses_bad_numbers(synth_shards, tmp_path, capsys, flags, flag):
    out = tmp_path / "m.json"
    _refused(capsys, ["data", "manifest", "--shards", str(synth_shards), "--out", str(out), *flags], flag)
    assert not out.exists()


@pytest.mark.parametrize(("flags", "flag"), [
    (["--objects", "0"], "--objects must be an integer >= 1, got 0"),
    (["--objects", "-2"], "--objects must be an integer >= 1, got -2"),
    (["--objects", "1", "--seed", "-1"], "--seed must be an integer >= 0, got -1"),
    (["--objects", "1", "--image-size", "4"], "--image-size must be an integer >= 8, got 4"),
    (["--objects", "1", "--workers", "0"], "--workers must be an integer >= 1, got 0"),
])
def test_data_synth_refuses_bad_numbers(tmp_path, capsys, flags, flag):
    _refused(capsys, ["data", "synth", "--out", str(tmp_path / "z.zip"), *flags], flag)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("flags", "flag"), [
    (["--shards", "0"], "shards must be an integer >= 1, got 0"),
    (["--shards", "-4"], "shards must be an integer >= 1, got -4"),
    (["--shards", "2", "--gpus", "0"], "gpus must be an integer >= 1, got 0"),
    (["--shards", "2", "--percent", "0"], "--percent must be in (0, 100], got 0.0"),
    (["--shards", "2", "--percent", "100.5"], "--percent must be in (0, 100], got 100.5"),
    (["--shards", "2", "--percent", "-5"], "--percent must be in (0, 100], got -5.0"),
    (["--shards", "2", "--percent", "nan"], "--percent must be in (0, 100], got nan"),
    (["--shards", "2", "--image-size", "0"], "--image-size must be an integer >= 1, got 0"),
])
def test_data_shard_refuses_bad_numbers(synth_zip, tmp_path, capsys, flags, flag):
    _refused(capsys, ["data", "shard", "--zip", str(synth_zip), "--out", str(tmp_path / "s"), *flags], flag)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("flags", "flag"), [
    (["--sample", "-1"], "--sample must be an integer >= 0, got -1"),
    (["--image-size", "0"], "--image-size must be an integer >= 1, got 0"),
])
def test_data_verify_refuses_bad_numbers(synth_zip, capsys, flags, flag):
    _refused(capsys, ["data", "verify", "--zip", str(synth_zip), *flags], flag)


@pytest.mark.parametrize(("flags", "flag"), [
    (["--retries", "-1"], "--retries must be an integer >= 0, got -1"),
    (["--sample", "-1"], "--sample must be an integer >= 0, got -1"),
    (["--timeout", "0"], "--timeout must be a positive number of seconds, got 0.0"),
])
def test_data_download_refuses_bad_numbers(tmp_path, capsys, flags, flag):
    # An unreachable URL: the check must come before any connection attempt.
    out = tmp_path / "NMR_Dataset.zip"
    _refused(capsys, ["data", "download", "--out", str(out), "--url", "http://127.0.0.1:9/x.zip", *flags], flag)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------- command groups (item 6)


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "viewfusion.cli", *argv], capture_output=True, text=True,
                          check=False, timeout=120)


DATA_COMMANDS = ("data download", "data synth", "data verify", "data shard", "data manifest")


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_data_help_lists_the_data_commands(flag):
    result = _cli("data", flag)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("usage: viewfusion data <command>")
    assert all(command in result.stdout for command in DATA_COMMANDS) and "sample" not in result.stdout


def test_data_alone_prints_the_usage_then_the_reason_and_exits_2():
    result = _cli("data")
    assert result.returncode == 2 and result.stdout == ""
    usage, last = result.stderr.rstrip("\n").rsplit("\n", 1)
    assert usage == _cli("data", "--help").stdout.rstrip("\n")
    assert last == "viewfusion data: error: name one of the commands above"


@pytest.mark.parametrize(("argv", "line"), [
    (["nonsense"], "viewfusion: error: unknown command 'nonsense'; `viewfusion --help` lists the commands"),
    (["nonsense", "--flag"], "viewfusion: error: unknown command 'nonsense'; `viewfusion --help` lists the commands"),
    (["data", "nonsense"], "viewfusion: error: unknown command 'data nonsense'; `viewfusion data --help` lists"),
])
def test_unknown_command_is_one_line_and_exit_2(argv, line):
    result = _cli(*argv)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(line), result.stderr


def test_a_data_loader_worker_error_is_printed_as_its_own_one_line_message(synth_shards, tmp_path):
    """torch re-raises a worker's ViewFusionError with the worker's traceback as its message;
    the CLI prints the original line (here: a corrupt shard met by a real worker process)."""
    copy = Path(shutil.copytree(synth_shards, tmp_path / "shards"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][0]["sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    loader = train_loader(copy, batch_size=2, num_workers=1, steps_per_epoch=1, shuffle_buffer=2, world_size=2)
    with pytest.raises(ViewFusionError) as caught:
        next(iter(loader))
    assert "Traceback" in str(caught.value)  # torch's wrapping, which the CLI must undo
    assert one_line(caught.value).startswith(f"shard {copy / 'nmr-train-0000.tar'}: sha256 is ")
    assert one_line(caught.value).endswith(f"the manifest says {'0' * 64}: corrupted or modified; "
                                           "run `viewfusion data shard` again")


@pytest.mark.parametrize("words", list(COMMANDS), ids=" ".join)
def test_every_command_names_a_module_with_its_two_functions(words):
    # The table holds module paths as strings, which neither ruff nor import-linter follows.
    module = importlib.import_module(COMMANDS[words][0])
    assert callable(module.add_arguments) and callable(module.run)
