# Stage 3: DeepLab trained on the pseudo-labels, evaluated on val (target of eval_voc / eval_coco).


rule train_seg:
    input:
        labels=pseudo_dir(RESULTS),
        images=split_list(SPLITS["train"]),
        backbone=backbone_weights("seg"),
    output:
        model=seg_model(RESULTS),
        curve=report(
            f"{RESULTS}/seg/losses.png",
            caption="../report/losses.rst",
            category="Training",
        ),
    log:
        job_log(RESULTS, "train_seg"),
    benchmark:
        job_benchmark(RESULTS, "train_seg")
    conda:
        "../../environment.yml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=1440,
    params:
        weights=lambda wc: WEIGHTS,
        device=config["device"],
        data=DATA_CFG,
        cfg=as_json(config["seg"]),
        split=SPLITS["train"],
        out=lambda wc, output: os.path.dirname(output.model),
    shell:
        "s2c --gpu-slot train_seg --data-cfg {params.data:q} --split {params.split:q}"
        " --labels {input.labels:q} --out {params.out:q} --cfg {params.cfg:q}"
        " --weights-dir {params.weights:q} --device {params.device:q} > {log:q} 2>&1"


rule eval_seg:
    input:
        model=seg_model(RESULTS),
        images=split_list(SPLITS["val"]),
    output:
        metrics=metrics_json(RESULTS, "seg_val"),
        pred=directory(seg_pred(RESULTS)),
    log:
        job_log(RESULTS, "eval_seg"),
    benchmark:
        job_benchmark(RESULTS, "eval_seg")
    conda:
        "../../environment.yml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    params:
        weights=lambda wc: WEIGHTS,
        device=config["device"],
        data=DATA_CFG,
        cfg=as_json(config["eval_seg"]),
        split=SPLITS["val"],
        submission=[],  # the server archive's flag (splits.test: eval_seg_test)
    shell:
        "s2c --gpu-slot eval_seg --model {input.model:q} --data-cfg {params.data:q}"
        " --split {params.split:q} --out-json {output.metrics:q} --out-dir {output.pred:q}"
        " --cfg {params.cfg:q} --device {params.device:q} --weights-dir {params.weights:q}"
        " {params.submission:q} > {log:q} 2>&1"
