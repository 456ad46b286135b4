"""The cross-setting checks of a workflow config: one owner for the Snakefile and `viewfusion plan`.

    check_workflow_config(config, train_gpus=4, root=Path("."))   # raises ViewFusionError

What the schema (workflow/schemas/config.schema.yaml) cannot say: names that must exist elsewhere
in the config, settings that must agree with each other, with the experiments' training configs
and with the profile (`train_gpus`: the GPUs its set-resources give a training node), sampler
settings that must survive their path tag, and lists whose entries must be distinct settings
(each entry becomes output paths: a setting listed twice, however spelled, would be scored twice
and fail only at the tables job). workflow/rules/common.smk runs them when it builds the DAG (a
ViewFusionError becomes its one `config error:` line), `viewfusion plan` before it counts, so the
two accept the same configs. Torch-free.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from viewfusion.errors import ViewFusionError
from viewfusion.model import samplers


def check_workflow_config(config: dict, *, train_gpus: int | None = None, root: Path = Path(".")) -> None:
    """Every cross-setting check of a (schema-validated, defaults-filled) workflow config."""
    from viewfusion.data.shard import check_settings

    training = config["training"]
    unknown = sorted(set(config["active_experiments"]) - set(config["experiments"]))
    if unknown:
        raise ViewFusionError(f"active_experiments names {unknown}, which `experiments` does not define")
    _check_distinct(config)
    nproc, nodes = training["nproc"], training["nodes"]
    if train_gpus is not None and train_gpus != nproc:
        raise ViewFusionError(
            f"training.nproc {nproc}, but the profile gives each training node {train_gpus} GPUs (set-resources: "
            f"train: gres; profiles/slurm: GPUS_PER_NODE): set training.nproc to {train_gpus} or the profile's "
            "GPUs to match")
    # Every rank of every node reads its own train shards.
    ranks = f"training.nproc {nproc}" if nodes == 1 else f"training.nodes {nodes} x training.nproc {nproc}"
    for name, spec in config["shard_sets"].items():
        check_settings(shards=spec["shards"], gpus=nodes * nproc, withhold=spec["withhold"],
                       source=f"shard_sets.{name} with {ranks}")
    for exp in config["active_experiments"]:
        _check_experiment(config, exp, root)


def check_sampler(spec: dict, where: str) -> None:
    """Refuse a config's sampler entry that the workflow cannot run as given: an unknown name,
    eta on a sampler without one, a bad spacing, or an eta its tag does not name exactly (NaN,
    1e-07, more than 6 digits), which would sample another eta or name no folder at all."""
    name, eta = spec["name"], spec.get("eta") or 0.0
    if name not in samplers.ALL_SAMPLERS:
        raise ViewFusionError(f"{where}: sampler {name!r}: use one of {', '.join(samplers.ALL_SAMPLERS)}")
    if not (isinstance(eta, (int, float)) and math.isfinite(eta) and 0 <= eta <= 1):
        raise ViewFusionError(f"{where}: sampler {name!r}: eta {eta!r} is not a number in 0..1")
    if eta and name != "ddim":
        raise ViewFusionError(f"{where}: sampler {name!r} takes no eta (only ddim does); remove it")
    try:
        samplers.spacing_of(name, spec.get("spacing"))
        tag = samplers.tag_of(spec)
        named = samplers.parse_tag(tag)[2]
    except ValueError as err:
        raise ViewFusionError(f"{where}: sampler {name!r}: {err}") from None
    if named != eta:
        raise ViewFusionError(f"{where}: sampler {name!r}: eta {eta!r} is {named:g} in its tag {tag!r}, which names "
                              "the folder and the sample command; write eta with at most 6 significant digits")


def checkpoint_tag(ckpt) -> str:
    """An evaluation.checkpoints entry as paths name it: final, best or step{N}."""
    return ckpt if ckpt in ("final", "best") else f"step{int(ckpt)}"


def _check_distinct(config: dict) -> None:
    """Every sampler valid; no experiment, checkpoint, view count or sampler setting listed twice."""
    ev = config["evaluation"]
    check_sampler(config["figures"]["sampler"], "figures.sampler")
    settings = []
    for index, spec in enumerate(ev["samplers"]):
        check_sampler(spec, f"evaluation.samplers[{index}]")
        # Settings alike once resolved share a folder or their metrics rows ("ddim-full" runs ddim-50).
        steps = spec.get("steps") or samplers.DEFAULT_STEPS.get(spec["name"])
        settings.append(samplers.tag(spec["name"], steps, spec.get("eta") or 0.0, spec.get("spacing")))
    for key, values in (("active_experiments", config["active_experiments"]),
                        ("evaluation.checkpoints", [checkpoint_tag(c) for c in ev["checkpoints"]]),
                        ("evaluation.view_counts", ev["view_counts"]), ("evaluation.samplers", settings)):
        seen: dict = {}
        for index, value in enumerate(values):
            if value in seen:
                raise ViewFusionError(f"{key}[{index}] is {key}[{seen[value]}] again ({value}): list each once, "
                                      "or it is sampled and scored twice")
            seen[value] = index


def eval_shard_set(config: dict, exp: str) -> str:
    """The shard set an experiment is evaluated on: evaluation.shard_set, else its own."""
    return config["evaluation"]["shard_set"] or config["experiments"][exp]["shard_set"]


def _check_experiment(config: dict, exp: str, root: Path) -> None:
    from viewfusion.configfile import load_config
    from viewfusion.data.nmr import resolve_category

    spec, ev = config["experiments"][exp], config["evaluation"]
    if spec["shard_set"] not in config["shard_sets"]:
        raise ViewFusionError(f"experiments.{exp}.shard_set {spec['shard_set']!r} is not in shard_sets "
                              f"({', '.join(config['shard_sets'])})")
    _check_protocol(config, exp)
    if _check_imported(config, exp, root):
        return
    cfg = load_config(root / spec["config"], spec.get("set", []))
    withheld = sorted(resolve_category(c) for c in config["shard_sets"][spec["shard_set"]]["withhold"])
    if sorted(resolve_category(c) for c in cfg.data.withheld) != withheld:
        raise ViewFusionError(f"experiments.{exp}: its config withholds {sorted(cfg.data.withheld)} (data.withheld), "
                              f"shard set {spec['shard_set']!r} withholds {withheld}; make them agree")
    if "best" in ev["checkpoints"] and cfg.train.validate_every is None:
        raise ViewFusionError(f"evaluation.checkpoints names best, but experiment {exp} does not validate "
                              "(train.validate_every is null), so it writes no checkpoints/best.pt")
    missing = [c for c in ev["checkpoints"] if c not in ("final", "best") and c not in cfg.train.snapshot_steps]
    if missing:
        raise ViewFusionError(f"evaluation.checkpoints {missing} are not in experiment {exp}'s train.snapshot_steps "
                              f"{list(cfg.train.snapshot_steps)}: those snapshots are never written")


def _check_imported(config: dict, exp: str, root: Path) -> bool:
    """True for an experiment of published weights (`weights:`): no training, only `final`."""
    spec = config["experiments"][exp]
    if "weights" not in spec:
        if "config" not in spec:
            raise ViewFusionError(f"experiments.{exp}: give `config` (a training config) or `weights` "
                                  "(a published checkpoint)")
        return False
    if spec.get("set"):
        raise ViewFusionError(f"experiments.{exp}: `set` overrides training; published weights are not trained")
    if not os.path.isfile(root / spec["weights"]):
        raise ViewFusionError(f"experiments.{exp}.weights: {spec['weights']} does not exist; put the official "
                              "best_model_all.pt there (bronemos/view-fusion's release) or change the path")
    if config["evaluation"]["checkpoints"] != ["final"]:
        raise ViewFusionError(f"experiments.{exp} evaluates published weights: evaluation.checkpoints must be [final]")
    return True


def _check_protocol(config: dict, exp: str) -> None:
    """The evaluation shard set exists; pixelNeRF's protocol is one view on softras lists."""
    ev, name = config["evaluation"], eval_shard_set(config, exp)
    if name not in config["shard_sets"]:
        raise ViewFusionError(f"evaluation.shard_set {name!r} is not in shard_sets "
                              f"({', '.join(config['shard_sets'])})")
    if ev["protocol"] != "pixelnerf":
        return
    if ev["view_counts"] != [1]:
        raise ViewFusionError(f"evaluation.protocol pixelnerf is the one-view protocol: set evaluation.view_counts "
                              f"to [1] (got {ev['view_counts']})")
    if config["shard_sets"][name]["lists"] != "softras":
        raise ViewFusionError(f"evaluation.protocol pixelnerf scores pixelNeRF's softras test objects: shard set "
                              f"{name!r} needs lists: softras (name one in evaluation.shard_set)")


def train_gpus(gres, gpu) -> int | None:
    """GPUs per training node that a profile's set-resources give the train rule (gres
    `gpu[:type]:N`, else `gpu`), None when it names none."""
    count = re.fullmatch(r"gpu(?::[^:,]+)?:(\d+)", str(gres))
    if count:
        return int(count.group(1))
    return int(gpu) if isinstance(gpu, int) and not isinstance(gpu, bool) and gpu > 0 else None


def profile_train_gpus(profile: Path | None) -> int | None:
    """`train_gpus` of a profile file or folder (None: no profile)."""
    from viewfusion.workflow.config import read_profile

    if profile is None:
        return None
    train = ((read_profile(profile)[1] or {}).get("set-resources") or {}).get("train") or {}
    return train_gpus(train.get("gres"), train.get("gpu"))
