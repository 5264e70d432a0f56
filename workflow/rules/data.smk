# Data preparation and weight provisioning (CPU, no GPU).

if config["synthetic"]["enabled"]:

    rule make_synthetic_data:
        output:
            [split_list(split) for split in ("train", "val", "train_aug")],
        log:
            job_log("", "make_synthetic_data"),
        benchmark:
            job_benchmark("", "make_synthetic_data")
        conda:
            "../../environment.yml"
        resources:
            mem_mb=2000,
            runtime=10,
        params:
            root=lambda wc, output: str(Path(output[0]).parents[2]),
            # scalars, not the section dict: key order in a config file must not trigger reruns
            n_train=config["synthetic"]["n_train"],
            n_val=config["synthetic"]["n_val"],
            size=config["synthetic"]["size"],
            seed=config["synthetic"]["seed"],
        shell:
            "s2c make_synthetic_data --root {params.root:q} --n-train {params.n_train:q}"
            " --n-val {params.n_val:q} --size {params.size:q} --seed {params.seed:q}"
            " > {log:q} 2>&1"


rule fetch_mobile_sam:
    output:
        f"{WEIGHTS}/{MOBILE_SAM_FILE}",
    log:
        job_log("", "fetch_mobile_sam"),
    benchmark:
        job_benchmark("", "fetch_mobile_sam")
    conda:
        "../../environment.yml"
    resources:
        mem_mb=1000,
        runtime=20,
    params:
        weights=lambda wc, output: os.path.dirname(output[0]),
    shell:
        "s2c fetch_weights --weights-dir {params.weights:q} --mobile-sam > {log:q} 2>&1"


rule fetch_efficientnet_lite0:
    output:
        f"{WEIGHTS}/{EFFNET_LITE0_FILE}",
    log:
        job_log("", "fetch_efficientnet_lite0"),
    benchmark:
        job_benchmark("", "fetch_efficientnet_lite0")
    conda:
        "../../environment.yml"
    resources:
        mem_mb=1000,
        runtime=20,
    params:
        weights=lambda wc, output: os.path.dirname(output[0]),
    shell:
        "s2c fetch_weights --weights-dir {params.weights:q} --efficientnet-lite0 > {log:q} 2>&1"
