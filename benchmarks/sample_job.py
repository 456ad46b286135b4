"""Fixed cost of one `viewfusion sample` job (start-up), printed as ONE JSON line.

    .venv/bin/python benchmarks/sample_job.py               # paper model, 3 repeats
    .venv/bin/python benchmarks/sample_job.py --repeats 5 --json startup.json

What a sampling job pays before and after its targets, whatever their number: the interpreter,
the imports, reading and hashing the checkpoint (the paper model, 33.9 M parameters, randomly
initialised: loading does not depend on the values), building the model, opening the manifest and
shards, writing the chunk. Measured as the wall time of a real `viewfusion sample` subprocess on
ONE target with ONE DDIM step (one U-Net evaluation, a few hundred ms on a CPU), beside baselines
measured in the same run: `python -c pass` and `python -c "import torch"`. `viewfusion plan`
charges every sampling job this fixed cost (viewfusion.workflow.rates.JOB_STARTUP_SECONDS); on a GPU
node CUDA initialisation (seconds) comes on top.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wall(cmd, repeats: int, **kw) -> float:
    """Median wall seconds of `cmd` (a list, or a function of the run index giving one) over
    `repeats` runs (each must succeed)."""
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd(i) if callable(cmd) else cmd, check=True, capture_output=True, **kw)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paper_checkpoint(path: Path) -> int:
    """A checkpoint of the paper model (config/experiments/paper.yaml) with random weights."""
    from viewfusion.config import to_dict
    from viewfusion.configfile import load_config
    from viewfusion.model import checkpoint
    from viewfusion.model.build import build_model

    cfg = load_config(ROOT / "config/experiments/paper.yaml")
    model = build_model(cfg)
    checkpoint.save(path, {"format": checkpoint.FORMAT, "format_version": checkpoint.FORMAT_VERSION,
                           "model": model.state_dict(), "optimizer": None, "scheduler": None, "ema": None,
                           "step": 0, "config": to_dict(cfg), "rng": None, "world_size": None})
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    from viewfusion.data.manifest import make_manifest
    from viewfusion.data.shard import write_shards
    from viewfusion.data.synth import write_synth_zip

    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    with tempfile.TemporaryDirectory(prefix="vf-startup-") as tmp:
        tmp = Path(tmp)
        write_synth_zip(tmp / "NMR_Dataset.zip", objects=26, seed=0, workers=1)
        write_shards(tmp / "NMR_Dataset.zip", tmp / "shards", shards=2)
        (tmp / "m.json").write_text(json.dumps(make_manifest(tmp / "shards", view_count=1, max_objects=1)))
        params = paper_checkpoint(tmp / "paper.pt")
        exe = str(Path(sys.executable).parent / "viewfusion")
        python = wall([sys.executable, "-c", "pass"], args.repeats, env=env)
        torch_s = wall([sys.executable, "-c", "import torch"], args.repeats, env=env)
        job = wall(lambda i: [exe, "sample", "--checkpoint", str(tmp / "paper.pt"), "--manifest", str(tmp / "m.json"),
                              "--shards", str(tmp / "shards"), "--out", str(tmp / f"out{i}"), "--sampler", "ddim",
                              "--steps", "1", "--device", "cpu", "--weights", "raw"], args.repeats, env=env)
    result = {"bench": "sample_job_startup", "repeats": args.repeats, "paper_params": params,
              "python_pass_s": round(python, 2), "import_torch_s": round(torch_s, 2),
              "sample_job_1_target_1_step_s": round(job, 2)}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
