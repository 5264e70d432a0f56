# The paper's Table 5 over this run's data: `snakemake table5`. Each CAM source (row `main`: the
# run's own CAMs or external.cams; one row per table5.sources entry) is scored as CAMs and as
# pseudo-labels with each refinement of table5.refine over the same SE cache, optionally with a
# segmentation net per source, into results/<run>/table5/table5.tsv (+ an HTML table).
use rule eval_cam as table5_eval_cam with:
    input:
        cams=cam_store(T5_RUN),
        images=split_list(SPLITS["cam_eval"]),
    output:
        metrics=metrics_json(T5_RUN, "cam_train"),
        bar=f"{T5_DIR}/{{source}}/figures/cam_train_iou.png",
    log:
        job_log(f"{T5_DIR}/{{source}}", "eval_cam"),
    benchmark:
        job_benchmark(f"{T5_DIR}/{{source}}", "eval_cam")
    wildcard_constraints:
        source=T5_EXT_RE,


use rule pseudo_labels as table5_pseudo_labels with:
    input:
        cams=t5_cams,
        threshold=t5_threshold,
        se=t5_se,
    output:
        directory(f"{T5_DIR}/{{source}}/pseudo_{{refine}}"),
    log:
        job_log(f"{T5_DIR}/{{source}}", "pseudo_{refine}"),
    benchmark:
        job_benchmark(f"{T5_DIR}/{{source}}", "pseudo_{refine}")
    wildcard_constraints:
        source=T5_ALL_RE,
        refine="none|crf|sam",
    params:
        cfg=lambda wc: as_json({**config["pseudo"], "refine": wc.refine}),


use rule eval_pseudo as table5_eval_pseudo with:
    input:
        pred=f"{T5_DIR}/{{source}}/pseudo_{{refine}}",
        images=split_list(SPLITS["cam_eval"]),
    output:
        metrics=metrics_json(T5_RUN, "pseudo_{refine}"),
        bar=f"{T5_DIR}/{{source}}/figures/pseudo_{{refine}}_iou.png",
    log:
        job_log(f"{T5_DIR}/{{source}}", "eval_pseudo_{refine}"),
    benchmark:
        job_benchmark(f"{T5_DIR}/{{source}}", "eval_pseudo_{refine}")
    wildcard_constraints:
        source=T5_ALL_RE,
        refine="none|crf|sam",


use rule train_seg as table5_train_seg with:
    input:
        labels=f"{T5_DIR}/{{source}}/pseudo_{T5['seg_refine']}",
        images=split_list(SPLITS["train"]),
        backbone=backbone_weights("seg"),
    output:
        model=seg_model(T5_RUN),
        curve=f"{T5_DIR}/{{source}}/seg/losses.png",
    log:
        job_log(f"{T5_DIR}/{{source}}", "train_seg"),
    benchmark:
        job_benchmark(f"{T5_DIR}/{{source}}", "train_seg")
    wildcard_constraints:
        source=T5_ALL_RE,


use rule eval_seg as table5_eval_seg with:
    input:
        model=seg_model(T5_RUN),
        images=split_list(SPLITS["val"]),
    output:
        metrics=metrics_json(T5_RUN, "seg_val"),
        pred=directory(seg_pred(T5_RUN)),
    log:
        job_log(f"{T5_DIR}/{{source}}", "eval_seg"),
    benchmark:
        job_benchmark(f"{T5_DIR}/{{source}}", "eval_seg")
    wildcard_constraints:
        source=T5_ALL_RE,


rule table5:
    input:
        t5_inputs(),
    output:
        tsv=report(
            f"{T5_DIR}/table5.tsv",
            caption="../report/table5.rst",
            category="Metrics",
            subcategory="Table 5",
        ),
        html=report(
            f"{T5_DIR}/table5.html",
            caption="../report/table5.rst",
            category="Metrics",
            subcategory="Table 5",
        ),
    log:
        f"{T5_DIR}/table5.log",
    localrule: True
    conda:
        "../../environment.yml"
    resources:
        mem_mb=500,
        runtime=5,
    params:
        rows=as_json(t5_rows()),
        title=f"s2c run {config['run']}: pseudo-label mIoU (%) per CAM source and refinement (the paper's Table 5)",
    shell:
        "s2c table5 --rows {params.rows:q} --out {output.tsv:q} 2>&1 | tee {log:q}"
        " && s2c report_table {output.tsv:q} --title {params.title:q} --out {output.html:q} >> {log:q} 2>&1"


# Predictions of a split without GT (splits.test, e.g. VOC test) in the evaluation server's layout.
if SPLITS.get("test"):

    use rule eval_seg as eval_seg_test with:
        input:
            model=seg_model(RESULTS),
            images=split_list(SPLITS["test"]),
        output:
            metrics=f"{RESULTS}/submission/{SPLITS['test']}.json",
            pred=directory(f"{RESULTS}/submission/pred_{SPLITS['test']}"),
            tar=f"{RESULTS}/submission/{config['data']['kind']}_{SPLITS['test']}.tar.gz",
        log:
            job_log(RESULTS, "eval_seg_test"),
        benchmark:
            job_benchmark(RESULTS, "eval_seg_test")
        params:
            split=SPLITS["test"],
            submission=lambda wc, output: flag_args("--submission", output.tar),

    rule submission:
        input:
            f"{RESULTS}/submission/{config['data']['kind']}_{SPLITS['test']}.tar.gz",
        localrule: True

else:

    rule submission:
        input:
            no_test_split,
        localrule: True
