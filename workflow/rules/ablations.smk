# The paper's ablation tables (METHOD.md §6) with one target: `snakemake ablations`.
# Each (row, seed) trains its own CAM classifier over the run's shared SAM cache, is evaluated like
# the main run, and lands as one line of results/<run>/ablations/ablations.tsv.
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
        f"{ABL_DIR}/probe/seed{{seed}}/logs/probe_cam.log",
    benchmark:
        f"{ABL_DIR}/probe/seed{{seed}}/benchmarks/probe_cam.tsv"
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


rule ablation_train_cam:
    input:
        images=split_list(SPLITS["train"]),
        embed=ablation_cache("embed"),
        se=ablation_cache("se"),
        sam=sam_checkpoint(),
        backbone=backbone_weights("cam"),
        init=ablation_init,
    output:
        model=f"{ABL_RUN}/cam/model.pt",
    log:
        f"{ABL_RUN}/logs/train_cam.log",
    benchmark:
        f"{ABL_RUN}/benchmarks/train_cam.tsv"
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
        cfg=lambda wc: as_json(ablation_cam_cfg(wc)),
        sam=as_json({k: SAM[k] for k in ("model_type", "checkpoint")}),
        split=SPLITS["train"],
        out=lambda wc, output: os.path.dirname(output.model),
        embed=lambda wc, input: flag_args("--embed-manifest", input.embed),
        se=lambda wc, input: flag_args("--se-manifest", input.se),
    shell:
        "s2c --gpu-slot train_cam --data-cfg {params.data:q} --split {params.split:q}"
        " {params.embed:q} {params.se:q} --out {params.out:q} --weights-dir {params.weights:q}"
        " --cfg {params.cfg:q} --sam-cfg {params.sam:q} --device {params.device:q} > {log:q} 2>&1"


rule ablation_infer_cam:
    input:
        model=f"{ABL_RUN}/cam/model.pt",
        images=split_list(SPLITS["train"]),
    output:
        f"{ABL_RUN}/cams/{SPLITS['train']}.h5",
    log:
        f"{ABL_RUN}/logs/infer_cam.log",
    benchmark:
        f"{ABL_RUN}/benchmarks/infer_cam.tsv"
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
        split=SPLITS["train"],
    shell:
        "s2c --gpu-slot infer_cam --model {input.model:q} --data-cfg {params.data:q}"
        " --split {params.split:q} --out {output:q} --cfg {params.cfg:q}"
        " --device {params.device:q} --weights-dir {params.weights:q} > {log:q} 2>&1"


rule ablation_eval_cam:
    input:
        cams=f"{ABL_RUN}/cams/{SPLITS['train']}.h5",
        images=split_list(SPLITS["cam_eval"]),
    output:
        metrics=f"{ABL_RUN}/metrics/cam_train.json",
    log:
        f"{ABL_RUN}/logs/eval_cam.log",
    conda:
        "../../environment.yml"
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        data=DATA_CFG,
        cfg=as_json(config["eval_cam"]),
        split=SPLITS["cam_eval"],
    shell:
        "s2c eval_cam --cams {input.cams:q} --data-cfg {params.data:q} --split {params.split:q}"
        " --out {output.metrics:q} --cfg {params.cfg:q} > {log:q} 2>&1"


rule ablation_pseudo_labels:
    input:
        cams=f"{ABL_RUN}/cams/{SPLITS['train']}.h5",
        threshold=f"{ABL_RUN}/metrics/cam_train.json",
        se=pseudo_se_manifest(),
    output:
        directory(f"{ABL_RUN}/pseudo/{SPLITS['train']}"),
    log:
        f"{ABL_RUN}/logs/pseudo_labels.log",
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


rule ablation_eval_pseudo:
    input:
        pred=f"{ABL_RUN}/pseudo/{SPLITS['train']}",
        images=split_list(SPLITS["cam_eval"]),
    output:
        metrics=f"{ABL_RUN}/metrics/pseudo_train.json",
    log:
        f"{ABL_RUN}/logs/eval_pseudo.log",
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
        " --split {params.split:q} --out {output.metrics:q} > {log:q} 2>&1"


rule ablation_train_seg:
    input:
        labels=f"{ABL_RUN}/pseudo/{SPLITS['train']}",
        images=split_list(SPLITS["train"]),
        backbone=backbone_weights("seg"),
    output:
        model=f"{ABL_RUN}/seg/model.pt",
    log:
        f"{ABL_RUN}/logs/train_seg.log",
    benchmark:
        f"{ABL_RUN}/benchmarks/train_seg.tsv"
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


rule ablation_eval_seg:
    input:
        model=f"{ABL_RUN}/seg/model.pt",
        images=split_list(SPLITS["val"]),
    output:
        metrics=f"{ABL_RUN}/metrics/seg_val.json",
        pred=directory(f"{ABL_RUN}/seg/pred_{SPLITS['val']}"),
    log:
        f"{ABL_RUN}/logs/eval_seg.log",
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
    shell:
        "s2c --gpu-slot eval_seg --model {input.model:q} --data-cfg {params.data:q}"
        " --split {params.split:q} --out-json {output.metrics:q} --out-dir {output.pred:q}"
        " --cfg {params.cfg:q} --device {params.device:q} --weights-dir {params.weights:q} > {log:q} 2>&1"


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
        runs=[f"{ABL_DIR}/{row}/seed{seed}" for row in ABL_ROWS for seed in ABL["seeds"]],
        command=" ".join(["snakemake", *sys.argv[1:]]),
    shell:
        "s2c ablations --runs {params.runs:q} --out {output:q}"
        " --command {params.command:q} 2>&1 | tee {log:q}"
