# Stage 2: CAMs → pseudo-labels (threshold from eval_cam; optional CRF or SAM post-processing).


rule pseudo_labels:
    input:
        cams=f"{RESULTS}/cams/{SPLITS['train']}.h5",
        threshold=f"{RESULTS}/metrics/cam_train.json",
        se=pseudo_se_manifest(),
    output:
        directory(f"{RESULTS}/pseudo/{SPLITS['train']}"),
    log:
        f"{RESULTS}/logs/pseudo_labels.log",
    benchmark:
        f"{RESULTS}/benchmarks/pseudo_labels.tsv"
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
        pred=f"{RESULTS}/pseudo/{SPLITS['train']}",
        images=split_list(SPLITS["cam_eval"]),
    output:
        metrics=f"{RESULTS}/metrics/pseudo_train.json",
        bar=report(
            f"{RESULTS}/figures/pseudo_train_iou.png",
            caption="../report/iou_bar.rst",
            category="Metrics",
            subcategory="Pseudo-labels",
        ),
    log:
        f"{RESULTS}/logs/eval_pseudo.log",
    benchmark:
        f"{RESULTS}/benchmarks/eval_pseudo.tsv"
    conda:
        "../../environment.yml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        data=DATA_CFG,
        split=SPLITS["cam_eval"],
    shell:
        "s2c eval_pseudo --pred {input.pred:q} --data-cfg {params.data:q}"
        " --split {params.split:q} --out {output.metrics:q} --bar {output.bar:q} > {log:q} 2>&1"
