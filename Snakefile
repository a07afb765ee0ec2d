"""purer: data-free meta-learning (PURER: ECI meta-training, ICFIL meta-testing).

    prepare -> pool (one job per teacher) -> manifest -> meta_train (method x shot x seed)
            -> meta_test (x test dataset: plain, ICFIL and its controls) -> report

    snakemake --cores all                          the default run (config/config.yaml)
    snakemake --cores all --configfile FILE        another config (e.g. config/experiments/*.yaml)
    snakemake --cores all --profile slurm          the same DAG on a SLURM cluster (README.md)

Every job runs `purer <step> --config FILE` with the same FILE; see README.md and config/README.md.
"""

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/pool.smk"
include: "workflow/rules/meta_train.smk"
include: "workflow/rules/meta_test.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        REPORT_OUTPUTS,
