"""meta_train: one job per (method or arm, n_shot, seed) of the grid (ECI and the baselines)."""


rule meta_train:
    input:
        code=CODE["meta_train"],
        manifest=MANIFEST,
        teachers=TEACHERS,
        val=VAL_SPLITS,
        trunk=branch_inputs,  # a branching arm starts from its ei trunk's warm-up state
    output:
        model=META_MODEL,
        summary=RUN_SUMMARY,
    params:
        config=CONFIGFILE,
        settings=meta_train_settings,
    log:
        f"{LOGS}/meta_train/{{method}}_{{n_shot}}shot_seed{{seed}}.log",
    threads: 1
    resources:
        gpu=meta_train_gpus,
        runtime=meta_train_runtime,
        mem_mb=32000,
        cpus_per_gpu=8,
    conda:
        "../envs/purer.yaml"
    shell:
        "purer meta-train --config {params.config:q} --method {wildcards.method} "
        "--n-shot {wildcards.n_shot} --seed {wildcards.seed} > {log:q} 2>&1"
