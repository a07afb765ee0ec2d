"""prepare: decode each configured dataset once into cached uint8 tensors per split."""


for _name, _dataset in CFG.datasets.items():

    rule:
        name:
            f"prepare_{rule_safe(_name)}"
        input:
            prepare_inputs(_dataset),
        output:
            [cache(_name, split) for split in paths.SPLITS],
        params:
            config=CONFIGFILE,
            dataset=_name,
            settings=settings(_dataset),
            source=prepare_source(_name),
        log:
            f"{LOGS}/prepare/{_name}.log",
        threads: 1
        resources:
            runtime=60,
            mem_mb=8000,
        conda:
            "../envs/purer.yaml"
        shell:
            "purer prepare --config {params.config:q} --dataset {params.dataset:q} --force > {log:q} 2>&1"
