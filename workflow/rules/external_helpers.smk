# Helpers of external.smk and table5.smk: the external sources, their checks and the Table 5 rows.
import re

EXTERNAL = config["external"]
T5 = config["table5"]
T5_DIR = f"{RESULTS}/table5"
T5_RUN = f"{T5_DIR}/{{source}}"  # a source's run folder, laid out like the main run's
T5_SOURCES = T5["sources"]
# external source names (never `main`, the run's own CAMs: the schema refuses it); (?!) matches nothing
T5_EXT_RE = "|".join(re.escape(s) for s in T5_SOURCES) or "(?!)"

for _key, _folder in [("external.cams", EXTERNAL["cams"]), ("external.pseudo", EXTERNAL["pseudo"])] + [
    (f"table5.sources.{n}.cams", s["cams"]) for n, s in T5_SOURCES.items()
]:
    if _folder and not Path(_folder).is_dir():
        raise WorkflowError(
            f"config error: {_key} {_folder!r} is not a folder; point it at the folder of per-image files "
            "(s2c.cam_import documents the formats)"
        )


def import_flags(src):
    """``--format F`` (+ ``--normalize``) of an external source, as a list for ``:q``."""
    return ["--format", src.get("format", "plain"), *(["--normalize"] if src.get("normalize") else [])]


T5_ROWS = (["main"] if T5["main"] else []) + list(T5_SOURCES)
T5_ALL_RE = "|".join(re.escape(s) for s in T5_ROWS) or "(?!)"


def t5_base(source):
    """Where a source's CAM store and eval_cam JSON live: the run's own for `main`."""
    return RESULTS if source == "main" else f"{T5_DIR}/{source}"


def t5_cams(wc):
    return cam_store(t5_base(wc.source))


def t5_threshold(wc):
    return metrics_json(t5_base(wc.source), "cam_train")


def t5_se(wc):
    return [cache_manifest("se")] if wc.refine == "sam" else []


def t5_rows():
    """The --rows JSON of s2c.stages.table5: each source's metrics files and the paper's figures."""
    rows = {}
    for s in T5_ROWS:
        src = T5_SOURCES.get(s, {})
        if s == "main":
            desc = f"{EXTERNAL['format']}:{EXTERNAL['cams']}" if EXTERNAL["cams"] else "s2c (train_cam)"
        else:
            desc = f"{src.get('format', 'plain')}:{src['cams']}"
        rows[s] = {
            "source": desc,
            "cam": metrics_json(t5_base(s), "cam_train"),
            "pseudo": {r: metrics_json(f"{T5_DIR}/{s}", f"pseudo_{r}") for r in T5["refine"]},
            "seg": metrics_json(f"{T5_DIR}/{s}", "seg_val") if T5["seg"] else None,
            "paper": src.get("paper", {}),
        }
    return rows


def t5_inputs():
    files = []
    for spec in t5_rows().values():
        files += [spec["cam"], *spec["pseudo"].values(), *([spec["seg"]] if spec["seg"] else [])]
    return files


def no_test_split(wc):
    raise WorkflowError("config error: the target submission needs splits.test (a split without GT, e.g. VOC test)")
