"""The one label space: each dataset's labels onto the NIH 14 findings, unknown where unmapped."""

from __future__ import annotations

import pandas as pd
import pytest

from chexvision_lib.core.labels import FINDINGS, UNKNOWN
from chexvision_lib.data.label_space import (
    LABEL_MAPS,
    combine_known,
    label_space_markdown,
    provided_findings,
    targets,
    to_nih_findings,
)


def test_combine_known_is_any_positive_then_any_negative_then_unknown():
    values = [[1, 0], [0, UNKNOWN], [UNKNOWN, UNKNOWN], [UNKNOWN, 1]]
    assert combine_known(values).tolist() == [1, 0, UNKNOWN, 1]


def test_chexpert_effusion_maps_and_unprovided_findings_are_unknown():
    labels = pd.DataFrame({"Pleural Effusion": [1, 0, UNKNOWN], "Lung Lesion": [1, 1, 1]})
    nih = to_nih_findings(labels, "chexpert")
    assert list(nih.columns) == list(FINDINGS)
    assert nih["Effusion"].tolist() == [1, 0, UNKNOWN]
    # "Lung Lesion" is a nodule OR a mass: it must not make either positive.
    assert nih["Nodule"].tolist() == [UNKNOWN] * 3
    assert nih["Mass"].tolist() == [UNKNOWN] * 3


def test_several_terms_of_one_finding_combine():
    labels = pd.DataFrame({"laminar atelectasis": [1, 0, 0], "atelectasis": [0, 0, 1]})
    assert to_nih_findings(labels, "padchest")["Atelectasis"].tolist() == [1, 0, 1]


def test_unknown_label_name_and_bad_value_are_errors():
    with pytest.raises(ValueError, match="Pleural Efusion"):
        to_nih_findings(pd.DataFrame({"Pleural Efusion": [1]}), "chexpert")
    with pytest.raises(ValueError, match="'Edema' of image 1 is 2"):
        to_nih_findings(pd.DataFrame({"Edema": [0, 2]}), "chexpert")
    with pytest.raises(ValueError, match="unknown 'nope'"):
        provided_findings("nope")


def test_provided_findings_follow_the_maps():
    assert provided_findings("nih") == list(FINDINGS)
    assert provided_findings("rsna") == ["Pneumonia"]
    assert provided_findings("binary") == []
    chexpert = set(provided_findings("chexpert"))
    assert {"Effusion", "Cardiomegaly", "Edema"} <= chexpert
    assert not {"Nodule", "Mass", "Hernia"} & chexpert
    for mapping in LABEL_MAPS.values():
        assert {t for v in mapping.values() for t in targets(v)} <= set(FINDINGS)


def test_markdown_table_has_a_row_per_finding():
    table = label_space_markdown().splitlines()
    assert len(table) == 2 + len(FINDINGS)
    effusion = next(line for line in table if line.startswith("| Effusion |"))
    assert "Pleural Effusion" in effusion and "pleural effusion" in effusion


def test_a_term_naming_two_findings_counts_for_both():
    labels = pd.DataFrame({"hydropneumothorax": [1, 0], "pneumothorax": [0, 0]})
    nih = to_nih_findings(labels, "padchest")
    assert nih["Pneumothorax"].tolist() == [1, 0]
    assert nih["Effusion"].tolist() == [1, 0]  # no effusion term, yet the first image has one
    assert "hydropneumothorax" in label_space_markdown().split("| Effusion |")[1].split("\n")[0]
