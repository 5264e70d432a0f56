# Thin entry point: the workflow lives in workflow/ (run `snakemake --cores 8`, or name a target).
include: "workflow/Snakefile"


# Snakemake resets the default target after an include, so workflow/Snakefile's
# `default_target: True` (rule all) is restated for this entry point.
workflow.default_target = "all"
