# The one place that names the files inside a folder: a run folder's outputs (the main run,
# each ablation (row, seed) and each Table 5 source lay them out the same way) and every rule's log
# and benchmark. Included first, so that every rule file can use it; the SPLITS these read is
# defined in common.smk and looked up when a rule calls them.


def job_log(folder, name):
    """A rule's log: ``<folder>/logs/<name>.log`` (``folder`` "": the working directory's logs/).
    ``name`` may hold the rule's wildcards."""
    return f"{folder}/logs/{name}.log" if folder else f"logs/{name}.log"


def benchmark_dir(folder):
    """Where a folder's rules write their benchmarks (the summary reads the run's and the cache's)."""
    return f"{folder}/benchmarks" if folder else "benchmarks"


def job_benchmark(folder, name):
    """A rule's benchmark table: ``<folder>/benchmarks/<name>.tsv``."""
    return f"{benchmark_dir(folder)}/{name}.tsv"


def cam_model(run):
    return f"{run}/cam/model.pt"


def cam_store(run, split=None):
    """The CAMs of ``split`` (default: training), as infer_cam writes and import_cams imports them."""
    return f"{run}/cams/{split or SPLITS['train']}.h5"


def pseudo_dir(run):
    """The pseudo-labels of the training split (pseudo_labels, or import_pseudo)."""
    return f"{run}/pseudo/{SPLITS['train']}"


def seg_model(run):
    return f"{run}/seg/model.pt"


def seg_pred(run, split=None):
    return f"{run}/seg/pred_{split or SPLITS['val']}"


def metrics_json(run, name):
    """A stage's scores: cam_train, pseudo_train, seg_val, …"""
    return f"{run}/metrics/{name}.json"
