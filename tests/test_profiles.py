"""What the Slurm profiles submit: the resources of each rule as `snakemake -n` resolves them
(profiles/slurm with config/paper_workflow.yaml: the paper run), turned into sbatch and job-step srun
arguments by the Slurm executor plugin's own builders (the functions it calls when it submits).
No cluster needed; tests/test_slurm.py runs the CI profile on a real one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PARTS = ("Snakefile", "workflow", "config", "profiles")
# One place to edit: the YTE definitions at the top of profiles/slurm/config.yaml.
CLUSTER = {"GPU_PARTITION": '"gpu"', "CPU_PARTITION": '"cpu"', "ACCOUNT": '"proj42"', "GPU_MODEL": '"v100"'}

submit_string = pytest.importorskip("snakemake_executor_plugin_slurm.submit_string")
slurm_utils = pytest.importorskip("snakemake_executor_plugin_slurm.utils")
jobstep = pytest.importorskip("snakemake_executor_plugin_slurm_jobstep")


class Resources(dict):
    """A job's resources as the plugin reads them: .get(name) and .name."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _copy(dest: Path) -> Path:
    for part in PARTS:
        src = REPO / part
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dest / part)
    return dest


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "VIEWFUSION_CI_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _value(text: str):
    return int(text) if re.fullmatch(r"-?\d+", text) else text


# `snakemake -n` in-process, printing what Snakemake computes for each group job it would submit
# (GroupJob.resources: the members layered by toposort level and summed side by side).
_DRY_RUN = """
import json, sys
import snakemake.jobs as J
_log_info = J.GroupJob.log_info
from snakemake.resources import GroupResources
def log_info(self, *args, **kwargs):
    # What the Slurm executor submits (run_local=False): a dry run itself computes it as if local.
    res = GroupResources.basic_layered(toposorted_jobs=self.toposorted, constraints=self.global_resources,
                                       run_local=False, additive_resources=["runtime"], sortby=["runtime"])
    res = {k: v for k, v in res.items() if isinstance(v, (int, str))}
    print("GROUP-JOB " + json.dumps({"group": self.groupid, "rules": sorted(j.rule.name for j in self.jobs),
                                     "resources": res}), file=sys.stderr)
    return _log_info(self, *args, **kwargs)
J.GroupJob.log_info = log_info
from snakemake.cli import main
sys.argv = ["snakemake", "-n", *sys.argv[1:]]
main()
"""


def dry_run(work: Path, *args: str) -> tuple[dict[str, SimpleNamespace], set[str], str]:
    """`snakemake -n` -> {rule: the first job's threads, resources and shell command}, the rules
    that run locally (`localrule`), and the whole output (with a `GROUP-JOB {json}` line per group
    job: its rules and the resources Snakemake submits it with)."""
    proc = subprocess.run([sys.executable, "-c", _DRY_RUN, *args], cwd=work, env=_env(),
                          capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    jobs: dict[str, SimpleNamespace] = {}
    local = set()
    # Members of a group job are printed indented inside it.
    for block in re.split(r"\n\s*(?=\[[A-Z][a-z]{2} )", text):
        head = re.search(r"^\s*(local)?rule (\w+):", block, re.M)
        if not head:
            continue
        kind, rule = head.groups()
        if kind:
            local.add(rule)
        if rule in jobs:
            continue
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        threads = re.search(r"^\s+threads: (\d+)$", block, re.M)
        shell = re.search(r"^\s*Shell command: (.*)$", block, re.M)
        pairs = (item.split("=", 1) for item in res.group(1).split(", ")) if res else ()
        jobs[rule] = SimpleNamespace(
            name=rule, threads=int(threads.group(1)) if threads else 1,
            resources=Resources({k: _value(v) for k, v in pairs}),
            shell=shell.group(1) if shell else "", is_group=lambda: False)
    return jobs, local, text


def group_jobs(text: str) -> list[dict]:
    """The group jobs of a dry run's output (see _DRY_RUN)."""
    return [json.loads(line.split(" ", 1)[1]) for line in text.splitlines() if line.startswith("GROUP-JOB ")]


def sbatch(job: SimpleNamespace) -> str:
    """The sbatch call the plugin builds for `job` (run_job: get_submit_command + gres),
    with -A/-p as its get_account_arg/get_partition_arg give them for set resources."""
    r = job.resources
    params = {"run_uuid": "RUN", "slurm_logfile": "LOG", "comment_str": f"rule_{job.name}",
              "account": f" -A {r['slurm_account']}" if r.get("slurm_account") else "",
              "partition": f" -p {r['slurm_partition']}" if r.get("slurm_partition") else "",
              "workdir": "WD"}
    settings = SimpleNamespace(requeue=True, no_requeue=False, qos=None, reservation=None)
    return submit_string.get_submit_command(job, params, settings=settings) + slurm_utils.set_gres_string(job)


def step(job: SimpleNamespace, batch_env_gpus: bool) -> str:
    """The job-step srun the jobstep plugin wraps a non-array job's Snakemake in."""
    return " ".join(["srun -n1", jobstep.get_cpu_setting(job, batch_env_gpus), jobstep.get_gpu_setting(job),
                     jobstep.get_node_setting(job)])


def flags(call: str) -> set[str]:
    return {f.strip() for f in call.replace(" -", "\n-").split("\n")}


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    work = _copy(tmp_path_factory.mktemp("profiles"))
    return dry_run(work, "--profile", "profiles/slurm", "--configfile", "config/paper_workflow.yaml")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The profile with the one place filled in, training on 2 nodes."""
    work = _copy(tmp_path_factory.mktemp("cluster"))
    profile = work / "profiles/slurm/config.yaml"
    text = profile.read_text()
    for name, value in CLUSTER.items():
        text, n = re.subn(rf'^  - {name} = .*$', f"  - {name} = {value}", text, flags=re.M)
        assert n == 1, name
    profile.write_text(text)
    (work / "nodes.yaml").write_text("training: {nodes: 2}\n")
    fast = "results/samples/paper/final/ddim-10-eta1-lambda/v3"
    targets = ["results/runs/paper/final.pt", f"{fast}/chunks/1-of-1.json",
               "results/samples/paper/final/ddpm-full/v3/chunks/1-of-5.json",
               "results/samples/paper/final/nearest/v3/chunks/1-of-1.json", f"{fast}/metrics.parquet"]
    return dry_run(work, *targets, "--profile", "profiles/slurm", "--configfile", "config/paper_workflow.yaml",
                   "nodes.yaml")


def local_rules(work: Path, *configfiles: str) -> set[str]:
    """The Snakefile's `localrules` for a config (a dry run does not mark them)."""
    code = ("import sys; from pathlib import Path; from snakemake.api import SnakemakeApi;"
            "from snakemake.settings.types import ResourceSettings, ConfigSettings, OutputSettings\n"
            "with SnakemakeApi(OutputSettings()) as api:\n"
            "    wf = api.workflow(resource_settings=ResourceSettings(cores=2), snakefile=Path('Snakefile'),"
            " config_settings=ConfigSettings(configfiles=[Path(p) for p in sys.argv[1:]]), workdir=Path('.'))\n"
            "    print('LOCAL', *sorted(wf._workflow._localrules))\n")
    proc = subprocess.run([sys.executable, "-c", code, *configfiles], cwd=work, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(re.search(r"^LOCAL(.*)$", proc.stdout, re.M).group(1).split())


@pytest.mark.slow
def test_the_paper_dag_and_what_runs_locally(paper, tmp_path):
    jobs, _, text = paper
    stats = {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", text.split("Job stats:", 1)[1], re.M)}
    # Internet, the login node's little work: never a cluster job.
    work = _copy(tmp_path)
    paper_local, synth_local = local_rules(work, "config/paper_workflow.yaml"), local_rules(work)
    assert {"download_dataset", "verify_dataset", "tables", "figures"} <= paper_local
    assert {"verify_dataset", "tables", "figures"} <= synth_local and "download_dataset" not in synth_local
    compute = {"train", "sample", "sample_sweep", "sample_nearest", "sample_figures", "metrics", "shard",
               "eval_manifest", "ground_truth"}
    assert not (paper_local | synth_local) & compute
    # Chunks sized per setting (viewfusion.workflow.chunking): per experiment 63 ancestral chunks of ~9 h on
    # V100s, DDIM-10 swept (all 8 view counts in one job), the copy baseline one CPU chunk per setting.
    n = len(yaml.safe_load((REPO / "config/paper_workflow.yaml").read_text())["active_experiments"])
    assert (stats["sample"], stats["sample_sweep"], stats["sample_nearest"], stats["metrics"]) == (
        n * 63, n, n * 8, n * 3 * 8)
    # `viewfusion plan` counts the same jobs, and the same Slurm submissions.
    from viewfusion.workflow import plan as P

    config = P.load_workflow_config([REPO / "config/paper_workflow.yaml"], REPO / "config/config.yaml",
                                    REPO / "workflow/schemas/config.schema.yaml")
    planned = P.make_plan(config, rates=P.default_rates("v100"), profile=P.profile_minutes(REPO / "profiles/slurm"),
                          root=REPO)
    for rule in ("train", "sample", "sample_sweep", "sample_nearest", "sample_figures", "metrics"):
        assert planned.jobs(rule) == stats[rule], rule
    # What goes to Slurm: every job but the local rules and `all`, a group job per bundle of small
    # CPU jobs. 7,849 submissions before chunks were sized per setting; a few hundred now.
    groups = group_jobs(text)
    grouped = {rule for g in groups for rule in g["rules"]}
    assert grouped == {"sample_nearest", "metrics", "sample_figures", "eval_manifest", "ground_truth"}
    submitted = sum(count for rule, count in stats.items() if rule not in grouped | paper_local | {"all", "total"})
    cluster_jobs = submitted + len(groups)
    assert cluster_jobs == P.cluster_jobs(planned) <= 400, (submitted, len(groups))
    # Every GPU job is worth its queue wait (>= 10 min of estimated work).
    assert planned.shortest_gpu_job_minutes() >= 10
    # Ground truth once per manifest (shard set x view count), not per sample directory.
    assert stats["ground_truth"] == len(planned.manifests) == stats["eval_manifest"]


@pytest.mark.slow
def test_training_is_one_node_fixed_memory_early_signal_and_requeue(paper):
    jobs, _, _ = paper
    train = jobs["train"]
    call = flags(sbatch(train))
    assert {"--nodes=1", "--gres=gpu:4", "--cpus-per-task=32", "--mem 64000", "-t 2880", "--requeue",
            "--signal=URG@600", "--open-mode=append"} <= call, call
    assert not any(f.startswith("--gpus") for f in call), call  # gres is per node: never split
    # Memory and runtime are the same on every attempt: the job requeues itself instead.
    assert train.resources["mem_mb"] == 64000 and train.resources["runtime"] == 2880
    # The job step Snakemake runs in keeps one node and the CPUs (the GPUs come with the job).
    assert step(train, batch_env_gpus=False) == "srun -n1 --cpus-per-task=32  --nodes=1"
    assert train.resources["max_train_minutes"] == 240 * 60  # config/paper_workflow.yaml training.max_hours
    assert "workflow/scripts/train.sh" in train.shell and "--nodes 1" in train.shell
    assert "--max-minutes 14400" in train.shell


@pytest.mark.slow
def test_sampling_gets_a_gpu_and_small_cpu_jobs_go_in_bundles(paper):
    jobs, _, text = paper
    sample, sweep = flags(sbatch(jobs["sample"])), flags(sbatch(jobs["sample_sweep"]))
    assert {"--gpus=1", "--cpus-per-gpu=4", "--mem 16000", "-t 720"} <= sample, sample
    assert {"--gpus=1", "--cpus-per-gpu=4", "--mem 16000", "-t 720"} <= sweep, sweep
    # The copy baseline, metrics and figure samples go to Slurm CPU_JOBS_PER_SUBMISSION (25)
    # parts at a time: a group job on one node's CPUs (the profile's `cores`), no GPU, its members
    # side by side and its runtime the sum of the rounds they need.
    cpu = [g for g in group_jobs(text) if g["group"] == "cpu"]
    assert cpu and all(set(g["rules"]) <= {"sample_nearest", "metrics", "sample_figures"} for g in cpu)
    for g in cpu:
        res = g["resources"]
        assert res["_cores"] <= 32 and res.get("gpu", 0) == 0 and "gres" not in res, res
        assert res["mem_mb"] <= 64000 and 60 <= res["runtime"] <= 12 * 60, res
    prep = [g for g in group_jobs(text) if g["group"] == "prep"]
    assert len(prep) == 1 and set(prep[0]["rules"]) == {"eval_manifest", "ground_truth"}


def test_partition_account_and_gpu_model_come_from_the_one_place(cluster):
    jobs, _, _ = cluster
    train, sample = flags(sbatch(jobs["train"])), flags(sbatch(jobs["sample"]))
    nearest, metrics = flags(sbatch(jobs["sample_nearest"])), flags(sbatch(jobs["metrics"]))
    assert {"-p gpu", "-A proj42", "--gres=gpu:v100:4", "--nodes=2"} <= train, train
    assert {"-p gpu", "-A proj42", "--gpus=v100:1"} <= sample, sample
    assert {"-p cpu", "-A proj42"} <= nearest and not any(f.startswith("--gpus") for f in nearest), nearest
    assert {"-p cpu", "-A proj42"} <= metrics, metrics
    # Two nodes: the rule hands train.sh the node count (srun + torchrun c10d).
    assert "--nodes 2" in jobs["train"].shell


def refused(work: Path, *args: str) -> str:
    """`snakemake -n ARGS` refused when the DAG is built: exit 2 and exactly one `config error:`
    line, which is returned."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", *args], cwd=work, env=_env(),
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("config error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


def test_nodes_must_divide_the_shards(tmp_path):
    work = _copy(tmp_path)
    (work / "nodes.yaml").write_text("training: {nodes: 3}\n")
    line = refused(work, "--profile", "profiles/slurm", "--configfile", "config/paper_workflow.yaml", "nodes.yaml")
    assert "training.nodes 3 x training.nproc 4" in line, line


@pytest.mark.parametrize("profile, configfiles, extra, gpus", [
    ("slurm", ["config/paper_workflow.yaml", "nproc.yaml"], [],
     "nproc 2, but the profile gives each training node 4 GPUs"),
    ("slurm", [], ["--set-resources", "train:gres=gpu:v100:2"],
     "nproc 1, but the profile gives each training node 2 GPUs"),
    ("local", [], ["--set-resources", "train:gpu=3"], "nproc 1, but the profile gives each training node 3 GPUs"),
])
@pytest.mark.slow
def test_nproc_must_equal_the_profiles_gpus_per_node(tmp_path, profile, configfiles, extra, gpus):
    """One process per GPU: a profile asking for other GPUs than training.nproc is refused when
    the DAG is built (before the queue wait after which train.sh would refuse it)."""
    work = _copy(tmp_path)
    (work / "nproc.yaml").write_text("training: {nproc: 2}\n")
    args = ["--configfile", *configfiles] if configfiles else []
    line = refused(work, "--profile", f"profiles/{profile}", *args, *extra)
    assert gpus in line, line


@pytest.fixture(scope="module")
def ci(tmp_path_factory):
    """profiles/slurm-ci with the default (demo) config, as tests/test_slurm.py runs it."""
    return dry_run(_copy(tmp_path_factory.mktemp("ci")), "--profile", "profiles/slurm-ci")


@pytest.mark.slow
def test_both_slurm_profiles_map_the_portable_resources(paper, ci):
    """Both Slurm profiles parse and map the portable resources as documented (no cluster), each
    with the config it is documented with: the real profile's 4 GPUs per training node need
    training.nproc 4 (the paper's config; the demo config's 1 is refused at DAG build). Training
    GPUs come as a per-node gres (the rule's portable `gpu` stays 0), sampling's as `gpu`."""
    # (The demo config's DDIM is swept on the CI profile: one sample_sweep job, no `sample` job.)
    for (jobs, _, _), train_gres, sample_gpu in ((paper, "gpu:4", 1), (ci, None, 1)):
        train, sample = jobs["train"].resources, (jobs.get("sample") or jobs["sample_sweep"]).resources
        assert train["gpu"] == 0 and train.get("gres") == train_gres, train
        assert sample["gpu"] == sample_gpu, sample
        assert "runtime" in train and "mem_mb" in train, train


def test_ci_profile_keeps_the_real_profiles_settings(ci):
    """profiles/slurm-ci differs only in sizes: the same arrays, requeue and early signal."""
    jobs, _, _ = ci
    train = flags(sbatch(jobs["train"]))
    assert {"--nodes=1", "--requeue", "--signal=URG@60", "-t 20", "--ntasks=1", "--cpus-per-task=2"} <= train, train
    assert {"--gpus=1", "--cpus-per-gpu=1"} <= flags(sbatch(jobs["sample_sweep"]))
    assert not any(f.startswith("--gpus") for f in flags(sbatch(jobs["sample_nearest"])))
    # Group jobs fit the one 2-CPU node (the profile's `cores`).
    assert group_jobs(ci[2]) and all(g["resources"]["_cores"] <= 2 for g in group_jobs(ci[2]))
    for profile in ("slurm", "slurm-ci"):
        text = (REPO / "profiles" / profile / "config.yaml").read_text()
        assert re.search(r"^slurm-array-jobs: sample,sample_sweep$", text, re.M), profile
        assert re.search(r"^  - metrics=cpu$", text, re.M), profile
        assert re.search(r"^slurm-requeue: true$", text, re.M), profile
