"""Sampling chunks per setting, sized from the rate model: the workflow's DAG and `viewfusion plan` ask it.

    sizing = size_chunks(config, root=Path("."), sample_minutes=720)   # the profile's sample runtime
    sizing.chunks("paper", "ddpm-full", 12)    # 18 on V100 rates: ceil(159.7 GPU h / 9 h)
    sizing.swept                               # {"ddim-10-eta1-lambda"}: one job per sweep of view counts

A setting is one (experiment, sampler, view count) (checkpoints cost the same). Its minutes are
targets x views x U-Net calls / rate (viewfusion.workflow.rates; `evaluation.sample_gpu` or a measured
`evaluation.sample_evals_per_second`). Each chunk is one job that also pays the fixed start-up
(rates.JOB_STARTUP_SECONDS), and may fill `evaluation.chunk_share` of the profile's sample runtime
(the budget): a setting gets the fewest chunks that fit, at most `evaluation.chunks` when it is a
number (a ceiling; `auto`: none). A sampler whose whole sweep of view counts fits one budget for
every experiment is *swept*: one job samples all its view counts (one chunk each), so a few
seconds of DDIM never become a Slurm job of their own. The copy baseline (no U-Net) is one chunk.

Targets come from the dataset the config names, never from files another dataset left in results/:
the synthetic dataset's exact split (computed from dataset.synth_objects), the NMR zip's own split
lists when the zip is at dataset.zip, else NMR's documented test-set sizes (an estimate: `exact`
is False and the plan says so). The counts, and so the chunk counts, are a function of the config,
the profile's runtime and the dataset: a rerun finds the same files. Torch-free.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

from viewfusion.errors import ViewFusionError
from viewfusion.evaluate.samplestore import MAX_CHUNKS
from viewfusion.model import samplers
from viewfusion.workflow import rates

# Test objects of the real NMR data when its zip is not there: ViewFusion's test.lst lists (the
# NMR release's per-category test.lst files: 8751) and the SoftRas lists pixelNeRF scores (8762).
NMR_TEST_OBJECTS = {"viewfusion": 8751, "softras": 8762}
PIXELNERF_TARGETS_PER_OBJECT = 23  # one source view, every other view a target
# A GPU job shorter than this costs more in queueing and start-up than it computes.
MIN_GPU_JOB_MINUTES = 10
DEFAULT_CHUNK_SHARE = 0.75  # a chunk may fill this fraction of its job's runtime (schema default)


@dataclass(frozen=True)
class Count:
    """Targets of a setting and where the number comes from (exact: counted, not estimated)."""

    targets: int
    source: str
    exact: bool


def _nmr_zip_counts(path: Path, lists: str, split: str) -> dict[str, int] | None:
    """Per-category objects of `split` in the NMR zip at `path` (None when it is not there)."""
    if not path.is_file():
        return None
    stat = path.stat()
    return _read_zip_counts(str(path.resolve()), stat.st_size, stat.st_mtime_ns, lists, split)


@functools.cache
def _read_zip_counts(path: str, size: int, mtime_ns: int, lists: str, split: str) -> dict[str, int]:
    """Read once per zip state: the real zip has ~1.1 M members, seconds to index, and every
    experiment of a DAG asks (size and mtime in the key: a replaced zip is read again)."""
    from viewfusion.data.nmr import SYNSETS, NMRZip

    with NMRZip(path) as nmr:
        return {name: len(nmr.split_list(synset, split, lists=lists)) for synset, name in SYNSETS.items()}


def split_objects(config: dict, shard_set: dict, split: str, root: Path) -> Count:
    """Objects of `split` in a shard set (after its `percent`) of the configured dataset."""
    lists, percent = shard_set.get("lists", "viewfusion"), shard_set.get("percent", 100)
    dataset = config.get("dataset", {})
    if dataset.get("source", "synth") == "synth":
        from viewfusion.data.shapes import object_synset
        from viewfusion.data.synth import object_split

        per: dict[str, int] = {}
        for i in range(dataset.get("synth_objects", 260)):
            if object_split(i, lists=lists) == split:
                per[object_synset(i)] = per.get(object_synset(i), 0) + 1
        return Count(sum(math.ceil(n * percent / 100) for n in per.values()), "the synthetic dataset's split", True)
    zip_path = root / dataset["zip"]
    per = _nmr_zip_counts(zip_path, lists, split)
    if per is not None:
        return Count(sum(math.ceil(n * percent / 100) for n in per.values()), f"{dataset['zip']}'s split lists", True)
    if split != "test":
        raise ViewFusionError(f"the size of the NMR {split} split is unknown until {dataset['zip']} is there; "
                              "pass --objects")
    total = NMR_TEST_OBJECTS[lists]
    return Count(math.ceil(total * percent / 100), f"NMR's documented {split} lists ({total} objects; "
                 f"{dataset['zip']} not there yet)", False)


def setting_targets(config: dict, exp: str, root: Path, objects: int | None = None) -> Count:
    """Evaluation targets per view count of one experiment (the same for every view count)."""
    ev = config["evaluation"]
    shard_set = ev.get("shard_set") or config["experiments"][exp]["shard_set"]
    count = (Count(objects, "--objects", True) if objects is not None
             else split_objects(config, config["shard_sets"][shard_set], ev["split"], root))
    n = count.targets
    if ev.get("max_objects"):
        n = min(n, ev["max_objects"])
    per = PIXELNERF_TARGETS_PER_OBJECT if ev["protocol"] == "pixelnerf" else ev.get("targets_per_object", 1)
    return Count(n * per, count.source, count.exact)


def sample_rate(config: dict) -> tuple[float, str]:
    """U-Net evaluations/s that size the chunks, and what says so."""
    ev = config["evaluation"]
    if ev.get("sample_evals_per_second"):
        return float(ev["sample_evals_per_second"]), "evaluation.sample_evals_per_second"
    gpu = ev.get("sample_gpu", "v100")
    return rates.default_rates(gpu)["sample"], f"the rate model's {gpu} (evaluation.sample_gpu)"


@dataclass(frozen=True)
class Setting:
    exp: str
    tag: str
    views: int
    targets: int
    calls: int  # U-Net calls per target and view (0: the copy baseline)
    minutes: float  # GPU minutes of U-Net work, start-up not included
    chunks: int


@dataclass
class Sizing:
    share: float
    budget_minutes: float
    rate: float
    rate_source: str
    settings: dict[tuple[str, str, int], Setting] = field(default_factory=dict)
    swept: frozenset[str] = frozenset()
    counts: dict[str, Count] = field(default_factory=dict)

    def chunks(self, exp: str, tag: str, views: int) -> int:
        return self.settings[(exp, tag, int(views))].chunks


def experiment_config(spec: dict, root: Path):
    """An experiment's resolved training config; published weights without a config sample on
    the official (default) schedule."""
    from viewfusion.config import ExperimentConfig
    from viewfusion.configfile import load_config

    return load_config(root / spec["config"], spec.get("set", [])) if spec.get("config") else ExperimentConfig()


def chunk_count(minutes: float, budget: float, ceiling: int | None) -> int:
    """The fewest chunks of `minutes` of work that each fit `budget` with the job start-up."""
    room = budget - rates.JOB_STARTUP_SECONDS / 60
    if room <= 0:
        raise ViewFusionError(f"a sampling job's budget of {budget:.2f} min does not cover the "
                              f"{rates.JOB_STARTUP_SECONDS:g} s start-up: raise the profile's sample runtime "
                              "or evaluation.chunk_share")
    needed = max(1, math.ceil(minutes / room - 1e-9))
    chunks = needed if ceiling is None else min(needed, ceiling)
    if chunks > MAX_CHUNKS:
        raise ViewFusionError(f"a sampling setting would need {chunks:,} chunks, more than {MAX_CHUNKS:,} (each is a "
                              "job and files): cap evaluation.chunks or give the measured rate "
                              "(evaluation.sample_evals_per_second)")
    return chunks


def size_chunks(config: dict, *, root: Path, sample_minutes: float, objects: int | None = None) -> Sizing:
    """Chunks per setting for every active experiment, sampler and view count (module doc)."""
    ev = config["evaluation"]
    share = ev.get("chunk_share", DEFAULT_CHUNK_SHARE)
    if not 0 < share <= 1 or not sample_minutes > 0:
        raise ViewFusionError(f"evaluation.chunk_share {share} x sample runtime {sample_minutes} min: "
                              "need 0 < chunk_share <= 1 and a positive runtime")
    rate, source = sample_rate(config)
    ceiling = None if ev.get("chunks", "auto") == "auto" else int(ev["chunks"])
    if ceiling is not None and ceiling > MAX_CHUNKS:
        raise ViewFusionError(f"evaluation.chunks {ceiling:,} is more than {MAX_CHUNKS:,} "
                              "(each chunk is a job and files)")
    sizing = Sizing(share=share, budget_minutes=share * sample_minutes, rate=rate, rate_source=source)
    sweeps: dict[str, list[float]] = {}
    for exp in config["active_experiments"]:
        spec = config["experiments"][exp]
        cfg = experiment_config(spec, root)
        count = sizing.counts[exp] = setting_targets(config, exp, root, objects)
        for sampler in ev["samplers"]:
            tag = samplers.tag_of(sampler)
            calls = 0 if sampler["name"] == samplers.BASELINE else samplers.unet_calls(
                sampler["name"], sampler.get("steps"), cfg.diffusion.n_timestep)
            sweep = 0.0
            for views in ev["view_counts"]:
                minutes = count.targets * views * calls / rate / 60
                chunks = 1 if calls == 0 else chunk_count(minutes, sizing.budget_minutes, ceiling)
                sizing.settings[(exp, tag, views)] = Setting(exp, tag, views, count.targets, calls, minutes, chunks)
                sweep += minutes + rates.JOB_STARTUP_SECONDS / 60
            if calls:
                sweeps.setdefault(tag, []).append(sweep)
    sizing.swept = frozenset(tag for tag, totals in sweeps.items() if max(totals) <= sizing.budget_minutes)
    return sizing
