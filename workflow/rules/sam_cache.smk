# SAM cache: heavy encoder and segment-everything run once per original image, one store per part
# (one writer per Zarr store), then a join writes the manifest the readers open.


rule sam_embed:
    input:
        images=split_list_of,
        ckpt=sam_checkpoint(),
    output:
        directory(f"{CACHE}/{{split}}/embed.part{{part}}.zarr"),
    log:
        job_log(CACHE, "sam_embed.{split}.part{part}"),
    benchmark:
        job_benchmark(CACHE, "sam_embed.{split}.part{part}")
    wildcard_constraints:
        split=SPLIT_RE,
        part="[0-9]+",
    conda:
        "../../environment.yml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    params:
        weights=lambda wc: WEIGHTS,
        device=config["device"],
        data=DATA_CFG,
        cfg=sam_embed_cfg(),
        parts=len(PARTS),
    shell:
        "s2c --gpu-slot sam_embed --data-cfg {params.data:q} --split {wildcards.split:q}"
        " --part {wildcards.part:q} --parts {params.parts:q} --out {output:q}"
        " --weights-dir {params.weights:q} --cfg {params.cfg:q} --device {params.device:q} > {log:q} 2>&1"


rule sam_everything:
    input:
        images=split_list_of,
        ckpt=sam_checkpoint(),
        embed=se_embed_store,
    output:
        directory(f"{CACHE}/{{split}}/{SE_KIND}.part{{part}}.zarr"),
    log:
        job_log(CACHE, "sam_everything.{split}.part{part}"),
    benchmark:
        job_benchmark(CACHE, "sam_everything.{split}.part{part}")
    wildcard_constraints:
        split=SPLIT_RE,
        part="[0-9]+",
    conda:
        "../../environment.yml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=720,
    params:
        weights=lambda wc: WEIGHTS,
        device=config["device"],
        data=DATA_CFG,
        cfg=sam_everything_cfg(),
        parts=len(PARTS),
        embed=lambda wc, input: flag_args("--embed-store", input.embed),
    shell:
        "s2c --gpu-slot sam_everything --data-cfg {params.data:q} --split {wildcards.split:q}"
        " --part {wildcards.part:q} --parts {params.parts:q} --out {output:q}"
        " --weights-dir {params.weights:q} --cfg {params.cfg:q} --device {params.device:q} {params.embed:q} > {log:q} 2>&1"


rule sam_cache_join:
    input:
        expand(f"{CACHE}/{{{{split}}}}/{{{{kind}}}}.part{{part}}.zarr", part=PARTS),
    output:
        f"{CACHE}/{{split}}/{{kind}}.json",
    log:
        job_log(CACHE, "sam_cache_join.{split}.{kind}"),
    benchmark:
        job_benchmark(CACHE, "sam_cache_join.{split}.{kind}")
    wildcard_constraints:
        split=SPLIT_RE,
        kind=f"embed|{SE_KIND}",
    conda:
        "../../environment.yml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        kind=lambda wc: wc.kind.split("-")[0],  # se-<tag> → se
    shell:
        "s2c sam_cache join --kind {params.kind:q} --parts {input:q} --out {output:q} > {log:q} 2>&1"
