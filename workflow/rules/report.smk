"""report: gather every metrics.json of the grid into tables, figures and summary.json."""


rule report:
    input:
        code=CODE["report"],
        metrics=grid_tests(),
        runs=grid_run_summaries(),
        manifest=MANIFEST,
    output:
        summary=REPORT_SUMMARY,
        tables=REPORT_TABLES,
        figures=REPORT_FIGURES,
        record=REPORT_RECORD,
    params:
        config=CONFIGFILE,
        settings=settings(CFG.report, CFG.grid),
    log:
        f"{LOGS}/report.log",
    threads: 1
    resources:
        runtime=30,
        mem_mb=8000,
    conda:
        "../envs/purer.yaml"
    shell:
        "purer report --config {params.config:q} > {log:q} 2>&1"
