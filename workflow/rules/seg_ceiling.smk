# The segmentation schedule's ceiling: the same seg config trained on the GT masks of the training
# split instead of the pseudo-labels (`snakemake seg_ceiling`; needs a split with GT masks).


rule gt_labels:
    input:
        images=split_list(SPLITS["train"]),
    output:
        directory(f"{RESULTS}/seg_gt/labels_{SPLITS['train']}"),
    log:
        job_log(RESULTS, "gt_labels"),
    conda:
        "../../environment.yml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        data=DATA_CFG,
        split=SPLITS["train"],
    shell:
        "s2c gt_labels --data-cfg {params.data:q} --split {params.split:q} --out {output:q} > {log:q} 2>&1"


use rule train_seg as train_seg_gt with:
    input:
        labels=f"{RESULTS}/seg_gt/labels_{SPLITS['train']}",
        images=split_list(SPLITS["train"]),
        backbone=backbone_weights("seg"),
    output:
        model=f"{RESULTS}/seg_gt/model.pt",
        curve=f"{RESULTS}/seg_gt/losses.png",
    log:
        job_log(RESULTS, "train_seg_gt"),
    benchmark:
        job_benchmark(RESULTS, "train_seg_gt")


use rule eval_seg as eval_seg_gt with:
    input:
        model=f"{RESULTS}/seg_gt/model.pt",
        images=split_list(SPLITS["val"]),
    output:
        metrics=metrics_json(RESULTS, "seg_gt_val"),
        pred=directory(f"{RESULTS}/seg_gt/pred_{SPLITS['val']}"),
    log:
        job_log(RESULTS, "eval_seg_gt"),
    benchmark:
        job_benchmark(RESULTS, "eval_seg_gt")


rule seg_ceiling:
    input:
        metrics_json(RESULTS, "seg_val"),
        metrics_json(RESULTS, "seg_gt_val"),
    output:
        f"{RESULTS}/metrics/seg_ceiling.tsv",
    log:
        job_log(RESULTS, "seg_ceiling"),
    localrule: True
    conda:
        "../../environment.yml"
    resources:
        mem_mb=500,
        runtime=5,
    shell:
        "s2c summary {input:q} --tsv {output:q} 2>&1 | tee {log:q}"
