# Helpers of ablations.smk: the per-(row, seed) cam config and the caches each row streams.
from s2c.sections import ABLATIONS, WARMUP_ROW, model_keys, overlay_cam
from s2c.sections import resolve_cam as resolve_cam_cfg

ABL = config["ablations"]
ABL_DIR = f"{RESULTS}/ablations"

WARMUP = ABL.get("warmup")  # the rows start from one L_CLS-only run per seed
ABL_ROWS = [*([WARMUP_ROW] if WARMUP else []), *ABL["rows"]]
PROBE = (WARMUP or {}).get("probe")  # the warm-up starts from a head fitted on frozen features
PROBE_MODEL = f"{ABL_DIR}/probe/seed{{seed}}/model.pt"


def abl_run(row, seed):
    """The run folder of one (row, seed): laid out like the main run's (common.smk)."""
    return f"{ABL_DIR}/{row}/seed{seed}"


ABL_RUN = abl_run("{row}", "{seed}")


def warmup_model(wc):
    return cam_model(abl_run(WARMUP_ROW, wc.seed))


def probe_cam_cfg():
    """The model keys of the run's cam section: what probe_cam builds (and the warm-up loads)."""
    return model_keys(config["cam"])


def ablation_cam_cfg(wc):
    """The cam section of one (row, seed): the run's, with the row's ablation and the seed; with
    ablations.warmup, the warm-up is L_CLS only for warmup.epochs (from the probe's model with
    warmup.probe) and the rows start from it."""
    if wc.row == WARMUP_ROW:
        over = {"ablation": "baseline", "seed": int(wc.seed), "epochs": WARMUP["epochs"]}
        return overlay_cam(config["cam"], {**over, "init": PROBE_MODEL.format(seed=wc.seed)} if PROBE else over)
    cfg = overlay_cam(config["cam"], {"ablation": wc.row, "seed": int(wc.seed)})
    if WARMUP:
        cfg = overlay_cam(overlay_cam(cfg, WARMUP.get("cam") or {}), {"init": warmup_model(wc)})
    return cfg


def ablation_init(wc):
    """The model.pt a run starts from: a row's warm-up, the warm-up's probe; [] for none."""
    if wc.row == WARMUP_ROW:
        return [PROBE_MODEL.format(seed=wc.seed)] if PROBE else []
    return [warmup_model(wc)] if WARMUP else []


def ablation_cache(kind):
    """Cache manifest a row's trainer streams (none for the L_CLS-only baseline)."""

    def inputs(wc):
        return cam_cache(resolve_cam_cfg(ablation_cam_cfg(wc)), kind)

    return inputs


def ablation_runs():
    """Every (row, seed) run folder of the table, in its order."""
    return [abl_run(row, seed) for row in ABL_ROWS for seed in ABL["seeds"]]


def ablation_metrics():
    # seg trains on the row's pseudo-labels, so it implies them
    names = ["cam_train"]
    names += ["pseudo_train"] if ABL["pseudo"] or ABL["seg"] else []
    names += ["seg_val"] if ABL["seg"] else []
    return [metrics_json(run, n) for run in ablation_runs() for n in names]
