# Python helpers of the workflow: config validation and get_* input functions. Rules hold none.
# Every cross-setting check (viewfusion.workflow.checks, which `viewfusion plan` runs too) runs here,
# when the DAG is built, before any job can delete outputs.
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)  # the viewfusion package beside the Snakefile
from viewfusion.workflow import chunking
from viewfusion.model import samplers
from viewfusion.bounded import check_tree, load_yaml, loads_yaml
from viewfusion.evaluate.samplestore import ground_truth_path
from viewfusion.configfile import written_sha256
from viewfusion.train.rundir import snapshot_name
from viewfusion.data.manifest import WORKFLOW_MANIFESTS, workflow_manifest
from viewfusion.workflow import checks as workflowchecks
from viewfusion.errors import ViewFusionError
from viewfusion.workflow.config import DEFAULT_SAMPLE_MINUTES, check_whole_numbers, runtime_minutes

SCHEMA = "../schemas/config.schema.yaml"


def config_error(message):
    """The project's clear-error contract at DAG-build time: one line, exit 2, nothing run."""
    print(f"config error: {message}", file=sys.stderr)
    raise SystemExit(2)


def coerce_scalars(value, schema):
    """`--config training={nproc: 1}` arrives as the string '1': give strings the type the schema
    asks for (integer, number, boolean) where they parse as one; names stay strings."""
    if isinstance(value, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        return {k: coerce_scalars(v, props.get(k, extra if isinstance(extra, dict) else {})) for k, v in value.items()}
    if isinstance(value, list):
        return [coerce_scalars(v, schema.get("items", {})) for v in value]
    types = [schema.get("type")] + [alt.get("type") for alt in schema.get("anyOf", [])]
    wanted = {t for ts in types for t in (ts if isinstance(ts, list) else [ts])}
    if isinstance(value, str) and wanted & {"integer", "number", "boolean"}:
        try:
            parsed = loads_yaml(value, f"--config value {value!r}")
        except ViewFusionError:
            return value  # no scalar of the wanted type: the schema check names the key
        kinds = {"integer": int, "number": (int, float), "boolean": bool}
        if any(isinstance(parsed, kinds[t]) and not (t != "boolean" and isinstance(parsed, bool))
               for t in wanted & kinds.keys()):
            return parsed
    return value


try:
    # Before anything walks or copies the tree (coerce_scalars, validate, the merges): the YAML
    # aliases of an overlay share nodes, and an alias bomb expands into gigabytes here.
    check_tree(config, "the workflow config (its config files and --config)")
    schema = load_yaml(os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml"))
    config.update(coerce_scalars(dict(config), schema))
except ViewFusionError as err:
    config_error(err)
validate(config, SCHEMA)
try:
    check_whole_numbers(config, schema)  # the schema's integer admits 26.0 (workflow.config)
except ViewFusionError as err:
    config_error(err)

EVAL = config["evaluation"]
ACTIVE = config["active_experiments"]
LOGS = "results/logs"


def eval_shard_set(exp):
    """The shard set an experiment is evaluated on: evaluation.shard_set, else its own."""
    return workflowchecks.eval_shard_set(config, exp)


def check_config():
    """Cross-setting checks, all at DAG-build time (see config_error): viewfusion.workflow.checks,
    which `viewfusion plan` runs too, so both refuse the same configs."""
    workflowchecks.check_workflow_config(config, train_gpus=profile_train_gpus())


def profile_train_gpus():
    """GPUs per training node that the profile's set-resources give the train rule (gres
    `gpu[:type]:N`, else `gpu`), None when it names none: training.nproc processes per node must
    match them, and this check says so before the queue wait that train.sh's own check comes after."""
    train = workflow.resource_settings.overwrite_resources.get("train")
    # snakemake Resources: .raw is the profile's value itself (.value refuses unevaluated ones).
    return None if train is None else workflowchecks.train_gpus(train.get("gres").raw, train.get("gpu").raw)


def imported_experiments():
    return [e for e, spec in config["experiments"].items() if "weights" in spec]


def exp_pattern(names):
    """A wildcard constraint matching exactly `names` (none: matches nothing)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


def profile_sample_minutes():
    """The sample rule's runtime in the profile (attempt 1), else the rule's own default: the
    budget the chunks are sized to (viewfusion.workflow.chunking)."""
    sample = workflow.resource_settings.overwrite_resources.get("sample")
    runtime = None if sample is None else sample.get("runtime")
    return DEFAULT_SAMPLE_MINUTES if runtime is None else runtime_minutes(runtime.raw, "the profile's sample")


try:
    check_config()
    # Chunks per setting and the swept samplers: a function of the config, the profile's sample
    # runtime and the dataset, so every run of this DAG finds the same chunk files.
    SAMPLE_MINUTES = profile_sample_minutes()
    SIZING = chunking.size_chunks(config, root=Path("."), sample_minutes=SAMPLE_MINUTES)
except ViewFusionError as err:
    config_error(err)


wildcard_constraints:
    exp="[A-Za-z0-9_]+",
    shard_set="[A-Za-z0-9_]+",
    ckpt="final|best|step[0-9]+",
    sampler=samplers.TAG_PATTERN,
    views="[0-9]+",
    chunk="[0-9]+",
    split="train|val|test",


def sampler_tag(spec):
    """{name, steps, eta, spacing} of the config -> a path-safe tag (viewfusion.model.samplers.tag_of)."""
    return samplers.tag_of(spec)


def parse_sampler(tag):
    """A sampler tag -> the CLI flags of `viewfusion sample`."""
    return samplers.cli_flags(*samplers.parse_tag(tag))


def ckpt_tag(ckpt):
    return workflowchecks.checkpoint_tag(ckpt)


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


def get_role_flags(wildcards=None):
    """The experiments the comparison tables pair up (config `roles`), as `viewfusion tables` flags:
    a renamed experiment is named here, never found by its default name."""
    r = config["roles"]
    return (f"--main-experiment {r['main']} --weighting {' '.join(r['weighting'])} --angle {' '.join(r['angle'])}"
            f" --withheld {' '.join(r['withheld'])} --withheld-category {r['withheld_category']}")


def get_import_flags(wildcards):
    spec = get_experiment(wildcards)
    return f"--config {spec['config']}" if spec.get("config") else ""


def get_train_config_sha256(wildcards):
    """Fingerprint of what the experiment's YAML, its `base:` chain and its overrides set: a
    param, so editing any of them retrains it, and nothing else does (a code version adding a
    config key with its default neither)."""
    spec = config["experiments"][wildcards.exp]
    return written_sha256(spec["config"], spec.get("set", []))


def get_checkpoint_file(wildcards):
    """The file `viewfusion sample` reads: final.pt or a numbered snapshot.

    Snapshots are written by the training job beside its rolling last.pt but are not declared
    outputs (a resumed job must not have them deleted), so sampling depends on final.pt, which
    exists only after every snapshot has been written.
    """
    run = f"results/runs/{wildcards.exp}"
    if wildcards.ckpt == "final":
        return f"{run}/final.pt"
    if wildcards.ckpt == "best":  # by in-training validation (train.validate_every)
        return f"{run}/checkpoints/best.pt"
    return f"{run}/checkpoints/{snapshot_name(wildcards.ckpt.removeprefix('step'))}"


def get_eval_shards(wildcards):
    return f"results/shards/{eval_shard_set(wildcards.exp)}"


def get_manifest(wildcards):
    return workflow_manifest(EVAL["protocol"], shard_set=eval_shard_set(wildcards.exp), split=EVAL["split"],
                             views=wildcards.views)


def get_ground_truth(wildcards):
    """The manifest's ground-truth pack: one per manifest, shared by every sample directory."""
    return str(ground_truth_path(get_manifest(wildcards)))


def get_viewlist(wildcards):
    """pixelNeRF's list as configured, else the seeded one the viewlist rule writes."""
    return EVAL["viewlist"] or f"results/manifests/{wildcards.shard_set}/viewlist-{wildcards.split}.txt"


def sample_dir(exp, ckpt, sampler, views):
    return f"results/samples/{exp}/{ckpt}/{sampler}/v{views}"


def get_sample_chunks(wildcards):
    """The chunk markers of one setting: the count viewfusion.workflow.chunking sized for it (one for a
    swept sampler, whose `sample_sweep` job writes every view count's)."""
    n = 1 if wildcards.sampler in SIZING.swept else setting_chunks(wildcards.exp, wildcards.sampler, wildcards.views)
    base = sample_dir(wildcards.exp, wildcards.ckpt, wildcards.sampler, wildcards.views)
    return [f"{base}/chunks/{i}-of-{n}.json" for i in range(1, n + 1)]


def setting_chunks(exp, tag, views):
    """SIZING's chunks of a setting; one asked for by file name beyond the config's samplers, view
    counts or active experiments (`snakemake results/samples/.../metrics.parquet`) is sized alone,
    by the same rule."""
    key = (exp, tag, int(views))
    if key not in SIZING.settings:
        name, steps, eta, spacing = samplers.parse_tag(tag)
        one = {**config, "active_experiments": [exp], "evaluation": {
            **EVAL, "samplers": [{"name": name, "steps": steps, "eta": eta, "spacing": spacing}],
            "view_counts": [int(views)]}}
        try:
            SIZING.settings[key] = chunking.size_chunks(one, root=Path("."), sample_minutes=SAMPLE_MINUTES).settings[key]
        except ViewFusionError as err:
            config_error(err)
    return SIZING.chunks(*key)


def tags_pattern(tags):
    """A sampler wildcard constraint matching exactly `tags` (none: nothing); the lookahead keeps
    `ddim-10` from matching the start of `ddim-10-eta1-lambda`."""
    return f"(?:{'|'.join(re.escape(t) for t in sorted(tags))})(?=/)" if tags else "(?!)"


def get_sweep_manifests(wildcards):
    return [get_manifest(SimpleNamespace(exp=wildcards.exp, views=v)) for v in EVAL["view_counts"]]


def sample_command(exp, ckpt, sampler, views, manifest, shards, chunk, threads, batch_size):
    """One `viewfusion sample` call: a `sample` job runs one, a `sample_sweep` job one per view count."""
    ckpt_file = get_checkpoint_file(SimpleNamespace(exp=exp, ckpt=ckpt))
    return (f"OMP_NUM_THREADS={threads} viewfusion sample --checkpoint {ckpt_file} --manifest {manifest}"
            f" --shards {shards} --out {sample_dir(exp, ckpt, sampler, views)} --chunk {chunk}"
            f" {parse_sampler(sampler)} --batch-size {batch_size} --experiment {exp}")


def get_sample_command(wildcards, input, threads, resources):
    return sample_command(wildcards.exp, wildcards.ckpt, wildcards.sampler, wildcards.views, input.manifest,
                          input.shards, f"{wildcards.chunk}/{wildcards.n}", threads, resources.batch_size)


def get_sweep_command(wildcards, input, threads, resources):
    return " && ".join(sample_command(wildcards.exp, wildcards.ckpt, wildcards.sampler, views, manifest,
                                      input.shards, "1/1", threads, resources.batch_size)
                       for views, manifest in zip(EVAL["view_counts"], input.manifests))


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
