"""CAM localisation on RSNA's and VinDr's own boxes: found from the run's data source, scaled by
each DICOM's own size (the cache holds resized pixels)."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from dicom_fixtures import write_rsna, write_vindr

from chexvision_lib.data.cache import open_cache
from chexvision_lib.data.prepare import prepare
from chexvision_lib.models.registry import build_model
from chexvision_lib.reporting import report


def _run_on(cache: Path, run: Path) -> Path:
    """A run folder as the report reads it: config.json (cache, data source) and an untrained
    model; training adds nothing the box bookkeeping depends on."""
    _, _, info = open_cache(cache)
    build_model("seresnet_small", image_size=32).save_pretrained(run / "model")
    config = {"cache": {"path": str(cache)}, "data_source": info["source"]}
    (run / "config.json").write_text(json.dumps(config))
    return run


@pytest.mark.parametrize("kind, write", [("rsna", write_rsna), ("vindr", write_vindr)])
def test_localisation_reads_the_datasets_boxes(tmp_path, kind, write):
    root = write(tmp_path / kind, seed=0)
    cache = prepare(root, tmp_path / "cache", size=32, workers=1, progress=False)
    run = _run_on(cache, tmp_path / "run")
    assert report.has_boxes(run)
    boxes, where = report.run_boxes(run)
    assert where == f"the {kind} annotation files" and len(boxes)
    table, _, _ = open_cache(cache)
    boxed = table[table["image_id"].isin(set(boxes["image_id"]))]
    # Each DICOM's own size (its header's Columns x Rows), not the cache's 32 px.
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in boxed["path"]]
    assert report.original_sizes(boxed) == [(h.Columns, h.Rows) for h in headers]
    split = boxed["split"].value_counts().idxmax()
    scores = report.localisation_report(run, split, device="cpu")
    scored = set(scores.loc[scores["finding"] != "all", "finding"])
    assert scored and scored <= set(boxes["finding"])
    assert (tmp_path / "run" / split / "localisation.csv").is_file()


def test_a_source_without_boxes_says_so(tmp_path, synth_root):
    cache = prepare(synth_root, tmp_path / "cache", size=32, progress=False)
    run = _run_on(cache, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config["data_source"] = {"kind": "chexpert", "root": str(tmp_path)}
    (run / "config.json").write_text(json.dumps(config))
    assert not report.has_boxes(run)
    with pytest.raises(FileNotFoundError, match=r"its data \(chexpert\) has no BBox_List"):
        report.run_boxes(run)
