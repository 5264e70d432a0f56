# Another code's CAMs or pseudo-labels (the `external` and `table5.sources` sections, formats in
# s2c.cam_import): imported into the CAM store / pseudo-label folder that train_cam + infer_cam
# (or everything before train_seg) would write, so no CAM training or SAM prompting job is scheduled.
rule import_cams:
    input:
        images=split_list(SPLITS["train"]),
        source=lambda wc: T5_SOURCES[wc.source]["cams"],
    output:
        cam_store(T5_RUN),
    log:
        job_log(f"{T5_DIR}/{{source}}", "import_cams"),
    benchmark:
        job_benchmark(f"{T5_DIR}/{{source}}", "import_cams")
    wildcard_constraints:
        source=T5_EXT_RE,
    conda:
        "../../environment.yml"
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        data=DATA_CFG,
        split=SPLITS["train"],
        fmt=lambda wc: import_flags(T5_SOURCES[wc.source]),
    shell:
        "s2c import_cams cams --source {input.source:q} {params.fmt:q} --data-cfg {params.data:q}"
        " --split {params.split:q} --out {output:q} --no-progress > {log:q} 2>&1"


if EXTERNAL["cams"]:

    use rule import_cams as import_run_cams with:
        input:
            images=split_list(SPLITS["train"]),
            source=EXTERNAL["cams"],
        output:
            cam_store(RESULTS),
        log:
            job_log(RESULTS, "import_cams"),
        benchmark:
            job_benchmark(RESULTS, "import_cams")
        params:
            fmt=import_flags(EXTERNAL),

    ruleorder: import_run_cams > infer_cam


if EXTERNAL["pseudo"]:

    rule import_pseudo:
        input:
            images=split_list(SPLITS["train"]),
            source=EXTERNAL["pseudo"],
        output:
            directory(pseudo_dir(RESULTS)),
        log:
            job_log(RESULTS, "import_pseudo"),
        benchmark:
            job_benchmark(RESULTS, "import_pseudo")
        conda:
            "../../environment.yml"
        resources:
            mem_mb=2000,
            runtime=60,
        params:
            data=DATA_CFG,
            split=SPLITS["train"],
        shell:
            "s2c import_cams pseudo --source {input.source:q} --data-cfg {params.data:q}"
            " --split {params.split:q} --out {output:q} --no-progress > {log:q} 2>&1"

    ruleorder: import_pseudo > pseudo_labels
