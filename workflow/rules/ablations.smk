# The paper's ablation tables (METHOD.md §6) with one target: `snakemake ablations`.
# Each (row, seed) trains its own CAM classifier over the run's shared SAM cache, is evaluated like
# the main run, and lands as one line of results/<run>/ablations/ablations.tsv. The stages are the
# main run's rules (cam.smk, pseudo.smk, seg.smk) over the (row, seed) folder: only the files, the
# row's cam section and the inputs that follow from it differ; the per-class bar figures are left out.
include: "ablation_helpers.smk"


wildcard_constraints:
    row="|".join([WARMUP_ROW, *ABLATIONS]),
    seed=r"\d+",


rule ablation_probe_cam:
    input:
        images=split_list(SPLITS["train"]),
        backbone=backbone_weights("cam"),
    output:
        model=PROBE_MODEL,
    log:
        job_log(f"{ABL_DIR}/probe/seed{{seed}}", "probe_cam"),
    benchmark:
        job_benchmark(f"{ABL_DIR}/probe/seed{{seed}}", "probe_cam")
    conda:
        "../../environment.yml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,
    params:
        weights=lambda wc: WEIGHTS,
        device=config["device"],
        data=DATA_CFG,
        cfg=as_json(probe_cam_cfg()),
        probe=lambda wc: as_json({**(PROBE or {}), "seed": int(wc.seed)}),
        split=SPLITS["train"],
    shell:
        "s2c --gpu-slot probe_cam --data-cfg {params.data:q} --split {params.split:q}"
        " --cfg {params.cfg:q} --probe {params.probe:q} --out {output.model:q}"
        " --weights-dir {params.weights:q} --device {params.device:q} > {log:q} 2>&1"


use rule train_cam as ablation_train_cam with:
    input:
        images=split_list(SPLITS["train"]),
        embed=ablation_cache("embed"),
        se=ablation_cache("se"),
        sam=sam_checkpoint(),
        backbone=backbone_weights("cam"),
        init=ablation_init,
    output:
        model=cam_model(ABL_RUN),
    log:
        job_log(ABL_RUN, "train_cam"),
    benchmark:
        job_benchmark(ABL_RUN, "train_cam")
    params:
        cfg=lambda wc: as_json(ablation_cam_cfg(wc)),


use rule infer_cam as ablation_infer_cam with:
    input:
        model=cam_model(ABL_RUN),
        images=split_list(SPLITS["train"]),
    output:
        cam_store(ABL_RUN),
    log:
        job_log(ABL_RUN, "infer_cam"),
    benchmark:
        job_benchmark(ABL_RUN, "infer_cam")
    params:
        split=SPLITS["train"],


use rule eval_cam as ablation_eval_cam with:
    input:
        cams=cam_store(ABL_RUN),
        images=split_list(SPLITS["cam_eval"]),
    output:
        metrics=metrics_json(ABL_RUN, "cam_train"),
    log:
        job_log(ABL_RUN, "eval_cam"),
    benchmark:
        job_benchmark(ABL_RUN, "eval_cam")


use rule pseudo_labels as ablation_pseudo_labels with:
    input:
        cams=cam_store(ABL_RUN),
        threshold=metrics_json(ABL_RUN, "cam_train"),
        se=pseudo_se_manifest(),
    output:
        directory(pseudo_dir(ABL_RUN)),
    log:
        job_log(ABL_RUN, "pseudo_labels"),
    benchmark:
        job_benchmark(ABL_RUN, "pseudo_labels")


use rule eval_pseudo as ablation_eval_pseudo with:
    input:
        pred=pseudo_dir(ABL_RUN),
        images=split_list(SPLITS["cam_eval"]),
    output:
        metrics=metrics_json(ABL_RUN, "pseudo_train"),
    log:
        job_log(ABL_RUN, "eval_pseudo"),
    benchmark:
        job_benchmark(ABL_RUN, "eval_pseudo")


use rule train_seg as ablation_train_seg with:
    input:
        labels=pseudo_dir(ABL_RUN),
        images=split_list(SPLITS["train"]),
        backbone=backbone_weights("seg"),
    output:
        model=seg_model(ABL_RUN),
    log:
        job_log(ABL_RUN, "train_seg"),
    benchmark:
        job_benchmark(ABL_RUN, "train_seg")


use rule eval_seg as ablation_eval_seg with:
    input:
        model=seg_model(ABL_RUN),
        images=split_list(SPLITS["val"]),
    output:
        metrics=metrics_json(ABL_RUN, "seg_val"),
        pred=directory(seg_pred(ABL_RUN)),
    log:
        job_log(ABL_RUN, "eval_seg"),
    benchmark:
        job_benchmark(ABL_RUN, "eval_seg")


rule ablations:
    input:
        ablation_metrics(),
    output:
        report(
            f"{ABL_DIR}/ablations.tsv",
            caption="../report/ablations.rst",
            category="Metrics",
            subcategory="Ablations",
        ),
    log:
        f"{ABL_DIR}/ablations.log",
    localrule: True
    conda:
        "../../environment.yml"
    resources:
        mem_mb=500,
        runtime=5,
    params:
        runs=ablation_runs(),
        command=" ".join(["snakemake", *sys.argv[1:]]),
    shell:
        "s2c ablations --runs {params.runs:q} --out {output:q} --command {params.command:q} 2>&1 | tee {log:q}"
