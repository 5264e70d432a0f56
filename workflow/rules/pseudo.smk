# Stage 2: CAMs → pseudo-labels (threshold from eval_cam; optional CRF or SAM post-processing).


rule pseudo_labels:
    input:
        cams=cam_store(RESULTS),
        threshold=metrics_json(RESULTS, "cam_train"),
        se=pseudo_se_manifest(),
    output:
        directory(pseudo_dir(RESULTS)),
    log:
        job_log(RESULTS, "pseudo_labels"),
    benchmark:
        job_benchmark(RESULTS, "pseudo_labels")
    conda:
        "../../environment.yml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        data=DATA_CFG,
        cfg=as_json(config["pseudo"]),
        split=SPLITS["train"],
        se=lambda wc, input: flag_args("--se-manifest", input.se),
    shell:
        "s2c pseudo_labels --cams {input.cams:q} --threshold-json {input.threshold:q}"
        " --data-cfg {params.data:q} --split {params.split:q} --out {output:q} --cfg {params.cfg:q}"
        " {params.se:q} > {log:q} 2>&1"


rule eval_pseudo:
    input:
        pred=pseudo_dir(RESULTS),
        images=split_list(SPLITS["cam_eval"]),
    output:
        metrics=metrics_json(RESULTS, "pseudo_train"),
        bar=report(
            f"{RESULTS}/figures/pseudo_train_iou.png",
            caption="../report/iou_bar.rst",
            category="Metrics",
            subcategory="Pseudo-labels",
        ),
    log:
        job_log(RESULTS, "eval_pseudo"),
    benchmark:
        job_benchmark(RESULTS, "eval_pseudo")
    conda:
        "../../environment.yml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        data=DATA_CFG,
        split=SPLITS["cam_eval"],
        # the per-class bar figure, where the rule (or one reusing it) declares one
        bar=lambda wc, output: flag_args("--bar", output.get("bar", [])),
    shell:
        "s2c eval_pseudo --pred {input.pred:q} --data-cfg {params.data:q}"
        " --split {params.split:q} --out {output.metrics:q} {params.bar:q} > {log:q} 2>&1"
