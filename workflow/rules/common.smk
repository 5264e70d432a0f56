# Run-wide paths (results, cache, SE store), part lists and per-rule config slices; the files inside
# a run folder and every rule's log / benchmark are named in paths.smk.
import json
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from s2c.data import split_list_file
from s2c.defaults import cpu_kernel_env, decodes_cached_embedding, settings_tag
from s2c.errors import S2CError
from s2c.sections import SAM_EMBED_DEFAULTS, SAM_EVERYTHING_DEFAULTS, cam_caches, resolve_sections
from s2c.weights import EFFNET_LITE0_FILE, MOBILE_SAM_FILE, sam_checkpoint_path

# Jobs run `s2c <stage>` (the console script beside the interpreter that runs Snakemake), so
# `.venv/bin/snakemake` works without activating the venv (cluster jobs inherit PATH too).
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
# cpu_kernels: portable pins every job's CPU code paths (s2c.defaults.cpu_kernel_env); jobs read
# these variables when torch starts, so setting them here reaches local and cluster jobs alike.
CPU_KERNEL_ENV = cpu_kernel_env(config["cpu_kernels"])
os.environ.update(CPU_KERNEL_ENV)
if CPU_KERNEL_ENV:
    logger.info("cpu_kernels: portable (" + " ".join(f"{k}={v}" for k, v in CPU_KERNEL_ENV.items()) + ")")
RESULTS = f"results/{config['run']}"
WEIGHTS = config["weights_dir"]
SAM = config["sam"]
PARTS = list(range(SAM["parts"]))
SPLITS = config["splits"]
# The cache depends on the data and the SAM model only, so runs (baseline, S2C, ablations) share it.
CACHE = f"cache/{config['dataset']}/{SAM['model_type']}"
# SE stores are named by their settings as well (se-<8 hex>): configs that segment one dataset
# differently keep separate stores instead of overwriting or silently reusing each other's.
SE_KIND = f"se-{settings_tag(SAM['everything'])}"
# What the wildcards of the cache and CAM rules may hold (the schema constrains split names to
# the same pattern): never a path separator or a shell character.
SPLIT_RE = "[A-Za-z0-9_.-]+"


def as_json(obj):
    """Config slice as JSON text; rules pass it as a `params` entry quoted with `:q`, so editing
    one section reruns only the rules that take it."""
    return json.dumps(obj, sort_keys=True)


DATA_CFG = as_json(config["data"])


def flag_args(flag, paths):
    """``[flag, path, ...]`` for an optional input (``[]`` when absent): a list, so a rule's
    ``{params.x:q}`` quotes each element and no path reaches the shell unquoted."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    return [flag, *paths] if paths else []


# Stage sections over their modules' defaults: unknown keys fail here, before any job starts.
try:
    STAGE = resolve_sections(config)
except S2CError as e:
    raise WorkflowError(f"config error: {e}") from None

if not config["synthetic"]["enabled"] and not Path(config["data"]["root"]).is_dir():
    raise WorkflowError(
        f"config data.root: dataset folder {config['data']['root']!r} not found; point data.root at "
        f"your {config['data']['kind'].upper()} root (see docs/USAGE.md, 'Real datasets')"
    )


def split_list(split):
    """The file that defines a split's image list (the package's answer: data.coco_splits and the
    official COCO *2017 names included); a rule input so list edits rerun the DAG."""
    try:
        return str(split_list_file(config["data"], split))
    except S2CError as e:
        raise WorkflowError(f"config error: {e}") from None


def split_list_of(wc):
    """split_list of a rule's ``{split}`` wildcard."""
    return split_list(wc.split)


def sam_checkpoint():
    """SAM checkpoint path (s2c.weights): sam.checkpoint, else the weights dir's MobileSAM (a rule
    provisions it) or official vit_b/l/h file (downloaded by the user, see docs/USAGE.md 'Weights')."""
    try:
        return str(sam_checkpoint_path(SAM["model_type"], SAM["checkpoint"], WEIGHTS, must_exist=True))
    except S2CError as e:
        raise WorkflowError(f"config error: {e}") from None


# A backbone weights file the config names is no rule's output: check it here, before the SAM cache
# is built, so the message names the key (a missing sam.checkpoint is a missing rule input already).
for _section in ("cam", "seg"):
    _pre = STAGE[_section].get("pretrained")
    if isinstance(_pre, str) and not Path(_pre).is_file():
        raise WorkflowError(
            f"config error: {_section}.pretrained {_pre!r} is not a file; point it at the weights file "
            "(see docs/USAGE.md, 'Weights'), or use true (ImageNet weights) / false"
        )


def backbone_weights(section):
    """Provisioned ImageNet weights a backbone needs (empty when none are fetched by us)."""
    cfg = STAGE[section]
    if cfg["backbone"] == "efficientnet_lite0" and cfg["pretrained"] is True:
        return [f"{WEIGHTS}/{EFFNET_LITE0_FILE}"]
    return []


def sam_embed_cfg():
    """The keys of the sam section that sam_embed takes (s2c.sections.SAM_EMBED_DEFAULTS)."""
    return as_json({k: SAM[k] for k in SAM_EMBED_DEFAULTS})


def sam_everything_cfg():
    """The keys of the sam section that sam_everything takes (s2c.sections.SAM_EVERYTHING_DEFAULTS)."""
    return as_json({k: SAM[k] for k in SAM_EVERYTHING_DEFAULTS})


def se_embed_store(wc):
    """The embedding part store segment-everything decodes from (sam.everything.reuse_embedding)."""
    if decodes_cached_embedding(SAM["everything"]):
        return [f"{CACHE}/{wc.split}/embed.part{wc.part}.zarr"]
    return []


# imported pseudo-labels and no CAMs (external.pseudo alone): no CAM metrics or panels to make
NO_CAMS = bool(config["external"]["pseudo"] and not config["external"]["cams"])


def final_figures():
    return [
        f"{RESULTS}/figures/cams_{SPLITS['cam_eval']}.png",
        f"{RESULTS}/figures/pseudo_panels.png",
        f"{RESULTS}/figures/seg_panels.png",
    ][int(NO_CAMS) :]


def final_metrics():
    return [metrics_json(RESULTS, n) for n in ("cam_train", "pseudo_train", "seg_val")][int(NO_CAMS) :]


def cache_manifest(kind, split=None):
    """The joined manifest of cache ``kind`` ("embed" or "se") for ``split`` (default: training)."""
    name = SE_KIND if kind == "se" else kind
    return f"{CACHE}/{split or SPLITS['train']}/{name}.json"


def cam_cache(cam, kind):
    """The manifest of cache ``kind`` a resolved cam section streams (s2c.sections.cam_caches, the
    trainer's own answer); [] when it streams none."""
    return [cache_manifest(kind)] if kind in cam_caches(cam) else []


def train_cam_cache(kind):
    """Cache manifests the main run's trainer streams."""
    return cam_cache(STAGE["cam"], kind)


def pseudo_se_manifest():
    if STAGE["pseudo"]["refine"] == "sam":
        return [cache_manifest("se")]
    return []
