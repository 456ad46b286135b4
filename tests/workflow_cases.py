"""Workflow configs that Snakemake (at DAG build) and `viewfusion plan` must both refuse with the
same one line, from viewfusion.workflow.checks: overlays merged over config/config.yaml, each with
words its line holds. tests/test_workflow.py dry-runs Snakemake on them, tests/test_plan.py the plan."""

from __future__ import annotations

import pytest

REFUSED = [
    # Issue 30: a setting listed twice, however spelled, used to pass the DAG check and fail at the
    # tables job (its target scored twice by one setting).
    pytest.param("evaluation: {samplers: [{name: ddim, steps: 10}, {name: nearest}, {name: ddim, steps: 10}]}\n",
                 "evaluation.samplers[2] is evaluation.samplers[0] again (ddim-10)", id="sampler-twice"),
    pytest.param("evaluation: {samplers: [{name: ddim, steps: 50, eta: 0},"
                 " {name: ddim, steps: 50, eta: 0.0, spacing: linspace}]}\n",
                 "evaluation.samplers[1] is evaluation.samplers[0] again (ddim-50)", id="sampler-spelled-twice"),
    pytest.param("evaluation: {samplers: [{name: ddim}, {name: ddim, steps: 50}]}\n",
                 "evaluation.samplers[1] is evaluation.samplers[0] again (ddim-50)", id="default-steps-twice"),
    pytest.param("evaluation: {view_counts: [1, 2, 1]}\n",
                 "evaluation.view_counts[2] is evaluation.view_counts[0] again (1)", id="view-count-twice"),
    pytest.param("evaluation: {checkpoints: [final, final]}\n",
                 "evaluation.checkpoints[1] is evaluation.checkpoints[0] again (final)", id="checkpoint-twice"),
    pytest.param("active_experiments: [tiny, tiny]\n", "active_experiments[1] is active_experiments[0] again (tiny)",
                 id="experiment-twice"),
    # Values the schema admits that name no folder (a MissingInputException) or another setting.
    pytest.param("evaluation: {samplers: [{name: ddim, steps: 10, eta: .nan}]}\n",
                 "evaluation.samplers[0]: sampler 'ddim': eta nan is not a number in 0..1", id="eta-nan"),
    pytest.param("figures: {sampler: {name: ddim, steps: 5, eta: .nan}}\n",
                 "figures.sampler: sampler 'ddim': eta nan is not a number in 0..1", id="figure-eta-nan"),
    pytest.param("evaluation: {samplers: [{name: ddim, steps: 10, eta: 0.1234567}]}\n",
                 "eta 0.1234567 is 0.123457 in its tag 'ddim-10-eta0.123457'", id="eta-digits"),
    pytest.param("evaluation: {samplers: [{name: ddim, steps: 10, eta: 0.0000001}]}\n",
                 "'ddim-10-eta1e-07' is not a sampler tag", id="eta-exponent"),
    pytest.param("evaluation: {view_counts: [2.0]}\n", "evaluation.view_counts[0]: 2.0 must be a whole number",
                 id="view-count-float"),
    # The schema's integer admits any whole float: each failed in its job (range(6.0), a batch of 16.0).
    pytest.param("evaluation: {max_objects: 6.0}\n", "evaluation.max_objects: 6.0 must be a whole number",
                 id="max-objects-float"),
    pytest.param("evaluation: {batch_size: 16.0}\n", "evaluation.batch_size: 16.0 must be a whole number",
                 id="batch-size-float"),
    pytest.param("shard_sets: {all: {shards: 2.0}}\n", "shard_sets.all.shards: 2.0 must be a whole number",
                 id="shards-float"),
    # The checks Snakemake ran before, which the plan skipped.
    pytest.param("active_experiments: [nope]\n", "active_experiments names ['nope']", id="unknown-experiment"),
    pytest.param("shard_sets: {all: {shards: 3}}\ntraining: {nproc: 2}\n", "not divisible by gpus 2",
                 id="shards-per-gpu"),
    pytest.param("training: {nodes: 3}\n", "shard_sets.all with training.nodes 3 x training.nproc 1: shards 2",
                 id="shards-per-node"),
    pytest.param("evaluation: {samplers: [{name: ddpm, spacing: lambda}]}\n", "takes no spacing", id="spacing"),
    pytest.param("evaluation: {checkpoints: [final, 17]}\n", "evaluation.checkpoints [17]", id="snapshot"),
    pytest.param("evaluation: {protocol: pixelnerf}\n", "set evaluation.view_counts to [1]", id="protocol"),
    # Chunk counts: each chunk is a job and files (samplestore.MAX_CHUNKS), a ceiling or sized.
    pytest.param("evaluation: {chunks: 100001}\n", "evaluation.chunks 100,001 is more than 100,000", id="chunks"),
    pytest.param("evaluation: {sample_evals_per_second: 1.0e-9}\n", "chunks, more than 100,000", id="chunks-sized"),
    pytest.param("evaluation: {sample_gpu: tpu}\n", "GPU class 'tpu': known classes are v100", id="sample-gpu"),
]
