"""s2c: From SAM to CAMs (CVPR 2024) as a reproducible Snakemake pipeline."""

__version__ = "0.1.0"
