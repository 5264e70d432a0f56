"""s2c.sections.cam_caches: the SAM caches the workflow schedules for a cam section are exactly the
ones train_cam opens (and refuses to start without)."""

import pytest

import s2c.cam_training as tc
from s2c.errors import S2CError
from s2c.sections import ABLATIONS, cam_caches, resolve_cam

FLAG = {"se": "--se-manifest", "embed": "--embed-manifest"}


@pytest.mark.parametrize("sam_mode", ["cached", "online"])
@pytest.mark.parametrize("row", [None, *ABLATIONS])
def test_cam_caches_are_what_the_trainer_requires(synthetic_voc, monkeypatch, row, sam_mode):
    opened = set()
    monkeypatch.setattr(tc, "SEMapReader", lambda *a, **kw: opened.add("se"))
    monkeypatch.setattr(tc, "EmbeddingReader", lambda *a, **kw: opened.add("embed"))
    monkeypatch.setattr(tc, "CAMTrainDataset", lambda *a, **kw: None)
    cfg = resolve_cam({"ablation": row, "sam_mode": sam_mode})
    data = {"kind": "voc", "root": str(synthetic_voc), "class_set": "voc20"}
    tc.build_dataset(data, "train", cfg, "embed.json", "se.json")
    assert opened == cam_caches(cfg)
    for kind in sorted(cam_caches(cfg)):  # each one it needs, left out, is a clear error naming its flag
        given = {k: f"{k}.json" for k in FLAG if k != kind}
        with pytest.raises(S2CError, match=FLAG[kind]):
            tc.build_dataset(data, "train", cfg, given.get("embed"), given.get("se"))


def test_cam_caches_of_the_paper_rows():
    caches = {row: cam_caches(resolve_cam({"ablation": row})) for row in ("baseline", "ssc_feature", "cpm_only", "s2c")}
    assert caches == {"baseline": set(), "ssc_feature": {"se"}, "cpm_only": {"embed"}, "s2c": {"embed", "se"}}
    assert cam_caches(resolve_cam({"sam_mode": "online"})) == {"se"}  # online SAM encodes the crops itself
