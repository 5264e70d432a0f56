# Helpers of ablations.smk: the per-(row, seed) cam config and the caches each row streams.
from s2c.sections import ABLATIONS
from s2c.sections import resolve_cam as resolve_cam_cfg

ABL = config["ablations"]
ABL_DIR = f"{RESULTS}/ablations"
ABL_RUN = f"{ABL_DIR}/{{row}}/seed{{seed}}"


def ablation_cam_cfg(wc):
    """The run's cam section with this row's ablation and seed."""
    return {**config["cam"], "ablation": wc.row, "seed": int(wc.seed)}


def ablation_cache(kind):
    """Cache manifest a row's trainer streams (none for the L_CLS-only baseline)."""

    def inputs(wc):
        return cam_cache(resolve_cam_cfg(ablation_cam_cfg(wc)), kind)

    return inputs


def ablation_metrics():
    # seg trains on the row's pseudo-labels, so it implies them
    names = ["cam_train"]
    names += ["pseudo_train"] if ABL["pseudo"] or ABL["seg"] else []
    names += ["seg_val"] if ABL["seg"] else []
    return [
        f"{ABL_DIR}/{row}/seed{seed}/metrics/{n}.json" for row in ABL["rows"] for seed in ABL["seeds"] for n in names
    ]
