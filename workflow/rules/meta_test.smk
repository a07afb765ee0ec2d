"""meta_test: evaluate each trained run on fixed episodes of each test dataset: plain, with ICFIL, and
ICFIL's controls (matched inner steps, noise images, support-only fine-tuning)."""

# plain evaluations do not depend on the ICFIL settings; adapt_batch is a speed setting (the same scores up to
# rounding, like precision or compile): changing it does not rerun finished tests
PLAIN_TEST_SETTINGS = {
    k: v for k, v in to_dict(CFG.meta_test).items() if k not in ("icfil", "matched_steps", "episode_batch", "adapt_batch")
}
TEST_SETTINGS = {k: v for k, v in to_dict(CFG.meta_test).items() if k != "adapt_batch"}


rule meta_test:
    input:
        code=CODE["meta_test"],
        model=META_MODEL,
        data=lambda wildcards: cache(wildcards.dataset, "test"),
    output:
        TEST_PLAIN,
    params:
        config=CONFIGFILE,
        settings=lambda wildcards: settings(PLAIN_TEST_SETTINGS, run_config(wildcards).meta_train.learner, CFG.seed),
    log:
        f"{LOGS}/meta_test/{{method}}_{{n_shot}}shot_seed{{seed}}_{{dataset}}_plain.log",
    threads: 1
    resources:
        gpu=gpus,
        runtime=60,
        mem_mb=16000,
        cpus_per_gpu=4,
    conda:
        "../envs/purer.yaml"
    shell:
        "purer meta-test --config {params.config:q} --method {wildcards.method} --n-shot {wildcards.n_shot} "
        "--seed {wildcards.seed} --dataset {wildcards.dataset:q} > {log:q} 2>&1"


rule meta_test_icfil:
    input:
        code=CODE["meta_test"],
        model=META_MODEL,
        data=lambda wildcards: cache(wildcards.dataset, "test"),
    output:
        TEST_ICFIL,
    params:
        config=CONFIGFILE,
        settings=lambda wildcards: settings(TEST_SETTINGS, run_config(wildcards).meta_train.learner, CFG.seed),
    log:
        f"{LOGS}/meta_test/{{method}}_{{n_shot}}shot_seed{{seed}}_{{dataset}}_icfil.log",
    threads: 1
    resources:
        gpu=gpus,
        runtime=240,  # ICFIL inverts the adapted model in every episode: slower
        mem_mb=16000,
        cpus_per_gpu=4,
    conda:
        "../envs/purer.yaml"
    shell:
        "purer meta-test --config {params.config:q} --method {wildcards.method} --n-shot {wildcards.n_shot} "
        "--seed {wildcards.seed} --dataset {wildcards.dataset:q} --icfil > {log:q} 2>&1"


rule meta_test_control:
    """The controls ICFIL must beat, on the same checkpoint and episodes (purer/variants.py)."""
    input:
        code=CODE["meta_test"],
        model=META_MODEL,
        data=lambda wildcards: cache(wildcards.dataset, "test"),
    output:
        TEST_CONTROL,
    params:
        config=CONFIGFILE,
        settings=lambda wildcards: settings(TEST_SETTINGS, run_config(wildcards).meta_train.learner, CFG.seed),
    log:
        f"{LOGS}/meta_test/{{method}}_{{n_shot}}shot_seed{{seed}}_{{dataset}}_{{control}}.log",
    threads: 1
    resources:
        gpu=gpus,
        runtime=240,  # the noise control runs the calibration too
        mem_mb=16000,
        cpus_per_gpu=4,
    conda:
        "../envs/purer.yaml"
    shell:
        "purer meta-test --config {params.config:q} --method {wildcards.method} --n-shot {wildcards.n_shot} "
        "--seed {wildcards.seed} --dataset {wildcards.dataset:q} --variant {wildcards.control} > {log:q} 2>&1"
