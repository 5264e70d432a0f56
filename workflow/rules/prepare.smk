# Dataset layout check (s2c.stages.prepare), included before every other rule file:
# 1. when the DAG is built, before any job: the folders, lists (VOC) or json entries (COCO, the
#    image list cached per edit of the json), every image file, and the user-supplied weights; a
#    problem stops Snakemake with what is missing and where to get it;
# 2. the prepare_voc / prepare_coco job (a target of `rule all`): the same check without the cache;
#    its report is a JSON file.
import json

from snakemake.exceptions import WorkflowError

from s2c.stages.prepare import check_layout, format_problems, layout_inputs, refuse_target
from s2c.weights import sam_checkpoint_path

KIND = config["data"]["kind"]
PREPARE_TRAIN = [config["splits"]["train"]]
PREPARE_EVAL = list(dict.fromkeys([config["splits"]["cam_eval"], config["splits"]["val"]]))
# user-supplied backbone weight files (true/false select provisioned ImageNet weights or none)
PREPARE_PRETRAINED = [
    str(config.get(sec, {}).get("pretrained"))
    for sec in ("cam", "seg")
    if isinstance(config.get(sec, {}).get("pretrained"), str)
    and config[sec]["pretrained"].lower() not in ("true", "false")
]
PREPARE_REPORT = f"cache/{config['dataset']}/prepare_{KIND}.json"
# the SAM checkpoint where the jobs will look for it: sam.checkpoint, else the weights folder's file
PREPARE_SAM_CKPT = str(
    sam_checkpoint_path(config["sam"]["model_type"], config["sam"]["checkpoint"], config["weights_dir"])
)

if not config["synthetic"]["enabled"]:
    _layout = check_layout(
        config["data"],
        PREPARE_TRAIN,
        PREPARE_EVAL,
        quick=True,
        sam_model_type=config["sam"]["model_type"],
        sam_checkpoint=PREPARE_SAM_CKPT,
        pretrained=PREPARE_PRETRAINED,
    )
    if not _layout["ok"]:
        raise WorkflowError(f"dataset check (s2c prepare; see config/README.md): {format_problems(_layout)}")


rule:
    name:
        f"prepare_{KIND}"
    input:
        layout_inputs(config["data"], [*PREPARE_TRAIN, *PREPARE_EVAL]),
    output:
        PREPARE_REPORT,
    log:
        job_log("", f"prepare_{KIND}.{config['dataset']}"),
    benchmark:
        job_benchmark("", f"prepare_{KIND}.{config['dataset']}")
    localrule: True
    conda:
        "../../environment.yml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        data=json.dumps(config["data"], sort_keys=True),
        train=PREPARE_TRAIN,
        evals=PREPARE_EVAL,
        sam_type=config["sam"]["model_type"],
        # MobileSAM is provisioned: nothing to check unless the config names a file
        sam_ckpt=(
            ["--sam-checkpoint", PREPARE_SAM_CKPT]
            if config["sam"]["checkpoint"] or config["sam"]["model_type"] != "vit_t"
            else []
        ),
        pretrained=["--pretrained", *PREPARE_PRETRAINED] if PREPARE_PRETRAINED else [],
    shell:
        "s2c prepare --data-cfg {params.data:q} --train {params.train:q}"
        " --eval {params.evals:q} --sam-model-type {params.sam_type:q}"
        " {params.sam_ckpt:q} {params.pretrained:q}"
        " --out {output:q} > {log:q} 2>&1"
