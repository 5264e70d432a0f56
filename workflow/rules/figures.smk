# Figures for `snakemake --report`: CAM overlays, pseudo-label and prediction panels.


rule figure_cams:
    input:
        cams=cam_store(RESULTS),
    output:
        report(
            f"{RESULTS}/figures/cams_{SPLITS['cam_eval']}.png",
            caption="../report/cams.rst",
            category="Figures",
        ),
    log:
        job_log(RESULTS, "figure_cams"),
    benchmark:
        job_benchmark(RESULTS, "figure_cams")
    conda:
        "../../environment.yml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        data=DATA_CFG,
        split=SPLITS["cam_eval"],
        n=6,
    shell:
        "s2c figures cams --cams {input.cams:q} --data-cfg {params.data:q}"
        " --split {params.split:q} --n {params.n:q} --out {output:q} > {log:q} 2>&1"


rule figure_labels:
    input:
        pred=lambda wc: {
            "pseudo": pseudo_dir(RESULTS),
            "seg": seg_pred(RESULTS),
        }[wc.kind],
    output:
        report(
            f"{RESULTS}/figures/{{kind}}_panels.png",
            caption="../report/panels.rst",
            category="Figures",
        ),
    log:
        job_log(RESULTS, "figure_labels.{kind}"),
    benchmark:
        job_benchmark(RESULTS, "figure_labels.{kind}")
    wildcard_constraints:
        kind="pseudo|seg",
    conda:
        "../../environment.yml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        data=DATA_CFG,
        split=lambda wc: SPLITS["cam_eval"] if wc.kind == "pseudo" else SPLITS["val"],
        n=6,
    shell:
        "s2c figures labels --pred {input.pred:q} --title {wildcards.kind:q}"
        " --data-cfg {params.data:q} --split {params.split:q} --n {params.n:q} --out {output:q} > {log:q} 2>&1"
