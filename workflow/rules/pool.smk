"""pool: train one teacher per class block (one job each), then write the pool manifest. Skipped when
the config brings its own pool (`pool_manifest`): its manifest and teacher files are then inputs."""


if BYO_POOL is None:

    rule pool_train:
        input:
            code=CODE["pool"],
            data=POOL_TRAIN_SPLITS,
        output:
            checkpoint=TEACHER,
            history=TEACHER_HISTORY,
        params:
            config=CONFIGFILE,
            index=lambda wildcards: int(wildcards.teacher),
            settings=settings(CFG.pool, CFG.seed),
        log:
            f"{LOGS}/pool/teacher_{{teacher}}.log",
        threads: 1
        resources:
            gpu=gpus,
            runtime=120,
            mem_mb=16000,
            cpus_per_gpu=4,
        conda:
            "../envs/purer.yaml"
        shell:
            "purer pool train --config {params.config:q} --teacher {params.index} > {log:q} 2>&1"


    rule pool_manifest:
        input:
            code=CODE["pool"],
            teachers=TEACHERS,
        output:
            MANIFEST,
        params:
            config=CONFIGFILE,
            settings=settings(CFG.pool),
        log:
            f"{LOGS}/pool/manifest.log",
        threads: 1
        resources:
            runtime=10,
            mem_mb=4000,
        conda:
            "../envs/purer.yaml"
        shell:
            "purer pool manifest --config {params.config:q} > {log:q} 2>&1"
