# Stage 1: the S2C CAM classifier, its multi-scale CAMs, and their evaluation.


rule train_cam:
    input:
        images=split_list(SPLITS["train"]),
        embed=train_cam_cache("embed"),
        se=train_cam_cache("se"),
        sam=sam_checkpoint(),
        backbone=backbone_weights("cam"),
    output:
        model=cam_model(RESULTS),
        curve=report(
            f"{RESULTS}/cam/losses.png",
            caption="../report/losses.rst",
            category="Training",
        ),
        diag=report(
            f"{RESULTS}/cam/cpm_diag.png",
            caption="../report/cpm_diag.rst",
            category="Training",
        ),
    log:
        job_log(RESULTS, "train_cam"),
    benchmark:
        job_benchmark(RESULTS, "train_cam")
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
        cfg=as_json(config["cam"]),
        sam=as_json({k: SAM[k] for k in ("model_type", "checkpoint")}),
        split=SPLITS["train"],
        out=lambda wc, output: os.path.dirname(output.model),
        embed=lambda wc, input: flag_args("--embed-manifest", input.embed),
        se=lambda wc, input: flag_args("--se-manifest", input.se),
    shell:
        "s2c --gpu-slot train_cam --data-cfg {params.data:q} --split {params.split:q}"
        " {params.embed:q} {params.se:q} --out {params.out:q} --weights-dir {params.weights:q}"
        " --cfg {params.cfg:q} --sam-cfg {params.sam:q} --device {params.device:q} > {log:q} 2>&1"


rule infer_cam:
    input:
        model=cam_model(RESULTS),
        images=split_list_of,
    output:
        cam_store(RESULTS, "{split}"),
    log:
        job_log(RESULTS, "infer_cam.{split}"),
    benchmark:
        job_benchmark(RESULTS, "infer_cam.{split}")
    wildcard_constraints:
        split=SPLIT_RE,
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
        cfg=as_json(config["infer_cam"]),
        # a param, so a rule reusing this one for a fixed split needs no {split} in its files
        split=lambda wc: wc.split,
    shell:
        "s2c --gpu-slot infer_cam --model {input.model:q} --data-cfg {params.data:q}"
        " --split {params.split:q} --out {output:q} --cfg {params.cfg:q}"
        " --device {params.device:q} --weights-dir {params.weights:q} > {log:q} 2>&1"


rule eval_cam:
    input:
        cams=cam_store(RESULTS),
        images=split_list(SPLITS["cam_eval"]),
    output:
        metrics=metrics_json(RESULTS, "cam_train"),
        bar=report(
            f"{RESULTS}/figures/cam_train_iou.png",
            caption="../report/iou_bar.rst",
            category="Metrics",
            subcategory="CAM",
        ),
    log:
        job_log(RESULTS, "eval_cam"),
    benchmark:
        job_benchmark(RESULTS, "eval_cam")
    conda:
        "../../environment.yml"
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        data=DATA_CFG,
        cfg=as_json(config["eval_cam"]),
        split=SPLITS["cam_eval"],
        # the per-class bar figure, where the rule (or one reusing it) declares one
        bar=lambda wc, output: flag_args("--bar", output.get("bar", [])),
    shell:
        "s2c eval_cam --cams {input.cams:q} --data-cfg {params.data:q} --split {params.split:q}"
        " --out {output.metrics:q} --cfg {params.cfg:q} {params.bar:q} > {log:q} 2>&1"
