# Thin entry point: the workflow lives in workflow/ (run `snakemake --cores 8 eval_voc`).
include: "workflow/Snakefile"
