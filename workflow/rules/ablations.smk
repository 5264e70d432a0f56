# The paper's ablation tables (METHOD.md §6) with one target: `snakemake ablations`.
# Each (row, seed) trains its own CAM classifier over the run's shared SAM cache, is evaluated like
# the main run, and lands as one line of results/<run>/ablations/ablations.tsv.
from s2c.train_cam import ABLATIONS
from s2c.train_cam import resolve_cfg as resolve_cam_cfg

ABL = config["ablations"]
ABL_DIR = f"{RESULTS}/ablations"
ABL_RUN = ABL_DIR + "/{row}/seed{seed}"


wildcard_constraints:
    row="|".join(ABLATIONS),
    seed=r"\d+",


def ablation_cam_cfg(wc):
    """The run's cam section with this row's ablation and seed."""
    return {**config["cam"], "ablation": wc.row, "seed": int(wc.seed)}


def ablation_cache(kind):
    """Cache manifest a row's trainer streams (none for the L_CLS-only baseline)."""

    def inputs(wc):
        cam = resolve_cam_cfg(ablation_cam_cfg(wc))
        needs = cam["ssc"]["enabled"] if kind == "se" else (cam["cpm"]["enabled"] and cam["sam_mode"] == "cached")
        return [f"{CACHE}/{SPLITS['train']}/{kind}.json"] if needs else []

    return inputs


def ablation_metrics():
    names = ["cam_train"] + (["pseudo_train"] if ABL["pseudo"] else [])
    return [f"{ABL_DIR}/{row}/seed{seed}/metrics/{n}.json" for row in ABL["rows"] for seed in ABL["seeds"] for n in names]


rule ablation_train_cam:
    input:
        images=split_list(SPLITS["train"]),
        embed=ablation_cache("embed"),
        se=ablation_cache("se"),
        sam=sam_checkpoint(),
        backbone=backbone_weights("cam"),
    output:
        model=f"{ABL_RUN}/cam/model.pt",
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
    conda:
        "../../environment.yml"
    log:
        f"{ABL_RUN}/logs/train_cam.log",
    benchmark:
        f"{ABL_RUN}/benchmarks/train_cam.tsv"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=1440,
    shell:
        "python -m s2c.gpu_slot python -m s2c.train_cam --data-cfg {params.data:q} --split {params.split:q}"
        " {params.embed:q} {params.se:q} --out {params.out:q} --weights-dir {params.weights:q}"
        " --cfg {params.cfg:q} --sam-cfg {params.sam:q} --device {params.device:q} > {log:q} 2>&1"


rule ablation_infer_cam:
    input:
        model=f"{ABL_RUN}/cam/model.pt",
        images=split_list(SPLITS["train"]),
    output:
        f"{ABL_RUN}/cams/{SPLITS['train']}.h5",
    params:
        weights=lambda wc: WEIGHTS,
        device=config["device"],
        data=DATA_CFG,
        cfg=as_json(config["infer_cam"]),
        split=SPLITS["train"],
    conda:
        "../../environment.yml"
    log:
        f"{ABL_RUN}/logs/infer_cam.log",
    benchmark:
        f"{ABL_RUN}/benchmarks/infer_cam.tsv"
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    shell:
        "python -m s2c.gpu_slot python -m s2c.infer_cam --model {input.model:q} --data-cfg {params.data:q}"
        " --split {params.split:q} --out {output:q} --cfg {params.cfg:q}"
        " --device {params.device:q} --weights-dir {params.weights:q} > {log:q} 2>&1"


rule ablation_eval_cam:
    input:
        cams=f"{ABL_RUN}/cams/{SPLITS['train']}.h5",
        images=split_list(SPLITS["cam_eval"]),
    output:
        metrics=f"{ABL_RUN}/metrics/cam_train.json",
    params:
        data=DATA_CFG,
        cfg=as_json(config["eval_cam"]),
        split=SPLITS["cam_eval"],
    conda:
        "../../environment.yml"
    log:
        f"{ABL_RUN}/logs/eval_cam.log",
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "python -m s2c.eval_cam --cams {input.cams:q} --data-cfg {params.data:q} --split {params.split:q}"
        " --out {output.metrics:q} --cfg {params.cfg:q} > {log:q} 2>&1"


rule ablation_pseudo_labels:
    input:
        cams=f"{ABL_RUN}/cams/{SPLITS['train']}.h5",
        threshold=f"{ABL_RUN}/metrics/cam_train.json",
        se=pseudo_se_manifest(),
    output:
        directory(f"{ABL_RUN}/pseudo/{SPLITS['train']}"),
    params:
        data=DATA_CFG,
        cfg=as_json(config["pseudo"]),
        split=SPLITS["train"],
        se=lambda wc, input: flag_args("--se-manifest", input.se),
    conda:
        "../../environment.yml"
    log:
        f"{ABL_RUN}/logs/pseudo_labels.log",
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    shell:
        "python -m s2c.pseudo_labels --cams {input.cams:q} --threshold-json {input.threshold:q}"
        " --data-cfg {params.data:q} --split {params.split:q} --out {output:q} --cfg {params.cfg:q}"
        " {params.se:q} > {log:q} 2>&1"


rule ablation_eval_pseudo:
    input:
        pred=f"{ABL_RUN}/pseudo/{SPLITS['train']}",
        images=split_list(SPLITS["cam_eval"]),
    output:
        metrics=f"{ABL_RUN}/metrics/pseudo_train.json",
    params:
        data=DATA_CFG,
        split=SPLITS["cam_eval"],
    conda:
        "../../environment.yml"
    log:
        f"{ABL_RUN}/logs/eval_pseudo.log",
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m s2c.eval_labels --pred {input.pred:q} --data-cfg {params.data:q}"
        " --split {params.split:q} --out {output.metrics:q} > {log:q} 2>&1"


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
    params:
        runs=[f"{ABL_DIR}/{row}/seed{seed}" for row in ABL["rows"] for seed in ABL["seeds"]],
        command=" ".join(["snakemake", *sys.argv[1:]]),
    conda:
        "../../environment.yml"
    log:
        f"{ABL_DIR}/ablations.log",
    resources:
        mem_mb=500,
        runtime=5,
    localrule: True
    shell:
        "python -m s2c.ablation_table --runs {params.runs:q} --out {output:q}"
        " --command {params.command:q} 2>&1 | tee {log:q}"
