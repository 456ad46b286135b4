# viewfusion: NMR ShapeNet -> shards -> training -> sampling -> metrics -> tables, figures, report.
#
#   snakemake --profile profiles/local     # synthetic dataset, CPU, minutes (config/config.yaml)
#   snakemake --profile profiles/slurm --configfile config/paper.yaml   # the paper, on a cluster
#
# Rules live in workflow/rules/; all Python helpers in workflow/rules/common.smk.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        get_final_outputs(),
    default_target: True
