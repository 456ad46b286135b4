# Python helpers of the workflow: config validation and get_* input functions. Rules hold none.
from snakemake.utils import validate

validate(config, "../schemas/config.schema.yaml")

EVAL = config["evaluation"]
ACTIVE = config["active_experiments"]
_unknown = sorted(set(ACTIVE) - set(config["experiments"]))
if _unknown:
    raise ValueError(f"active_experiments names {_unknown}, which config['experiments'] does not define")
LOGS = "results/logs"


wildcard_constraints:
    exp="[A-Za-z0-9_]+",
    shard_set="[A-Za-z0-9_]+",
    ckpt="final|step[0-9]+",
    sampler="nearest|(ddpm|ddim)-(full|[0-9]+)(-eta[0-9.]+)?",
    views="[0-9]+",
    chunk="[0-9]+",


def sampler_tag(spec):
    """{name, steps, eta} -> a path-safe tag: ddim-50, ddim-50-eta0.5, ddpm-full, nearest."""
    if spec["name"] == "nearest":
        return "nearest"
    steps = spec.get("steps")
    tag = f"{spec['name']}-{'full' if steps is None else steps}"
    return tag + (f"-eta{spec['eta']:g}" if spec.get("eta", 0) else "")


def parse_sampler(tag):
    """Inverse of sampler_tag: the CLI flags of `viewfusion sample`."""
    name, *rest = tag.split("-")
    flags = f"--sampler {name}"
    if not rest:
        return flags
    steps, *rest = rest
    if steps != "full":
        flags += f" --steps {steps}"
    if rest:
        flags += f" --eta {rest[0].removeprefix('eta')}"
    return flags


def ckpt_tag(ckpt):
    return "final" if ckpt == "final" else f"step{int(ckpt)}"


def get_experiment(wildcards):
    if wildcards.exp not in config["experiments"]:
        raise ValueError(f"experiment {wildcards.exp!r} is not in config['experiments']")
    return config["experiments"][wildcards.exp]


def get_shard_set(wildcards):
    return config["shard_sets"][wildcards.shard_set]


def get_experiment_shards(wildcards):
    return f"results/shards/{get_experiment(wildcards)['shard_set']}"


def get_train_overrides(wildcards):
    sets = get_experiment(wildcards).get("set", [])
    return " ".join(f"--set {s}" for s in sets)


def get_checkpoint_file(wildcards):
    """The file `viewfusion sample` reads: final.pt or a numbered snapshot.

    Snapshots are written by the training job beside its rolling last.pt but are not declared
    outputs (a resumed job must not have them deleted), so sampling depends on final.pt, which
    exists only after every snapshot has been written.
    """
    run = f"results/runs/{wildcards.exp}"
    if wildcards.ckpt == "final":
        return f"{run}/final.pt"
    return f"{run}/checkpoints/step_{int(wildcards.ckpt.removeprefix('step')):08d}.pt"


def get_manifest(wildcards):
    shard_set = get_experiment(wildcards)["shard_set"]
    return f"results/manifests/{shard_set}/{EVAL['split']}-v{wildcards.views}.json"


def get_sample_chunks(wildcards):
    n = EVAL["chunks"]
    base = f"results/samples/{wildcards.exp}/{wildcards.ckpt}/{wildcards.sampler}/v{wildcards.views}"
    return [f"{base}/chunks/{i}-of-{n}.json" for i in range(1, n + 1)]


def get_metric_files(wildcards=None):
    return [
        f"results/samples/{exp}/{ckpt_tag(c)}/{sampler_tag(s)}/v{v}/metrics.parquet"
        for exp in ACTIVE
        for c in EVAL["checkpoints"]
        for s in EVAL["samplers"]
        for v in EVAL["view_counts"]
    ]


def get_lpips_flags(wildcards=None):
    m = config["metrics"]
    return f"--lpips-net {m['lpips_net']}" if m["lpips"] else "--no-lpips"


def get_figure_samples(wildcards=None):
    if not config["figures"]["enabled"]:
        return []
    return [f"results/figure_samples/{exp}/done.json" for exp in ACTIVE]


def get_final_outputs():
    return ["results/tables", "results/figures", "results/data/dataset_check.json"]
