import pytest

from chexvision_lib.core.labels import FINDINGS, OUTPUTS, canonical_finding, parse_finding_labels


def test_canonical_order_and_outputs():
    assert FINDINGS[0] == "Atelectasis" and FINDINGS[-1] == "Hernia" and len(FINDINGS) == 14
    assert OUTPUTS[:14] == FINDINGS and OUTPUTS[14] == "Abnormal"


def test_split_on_bar_not_substrings():
    vector = parse_finding_labels("Pleural_Thickening")
    assert vector == [int(name == "Pleural_Thickening") for name in FINDINGS]
    assert parse_finding_labels("No Finding") == [0] * 14
    both = parse_finding_labels("Effusion|Mass")
    assert [FINDINGS[i] for i, v in enumerate(both) if v] == ["Effusion", "Mass"]


def test_unknown_and_mixed_labels_are_errors():
    with pytest.raises(ValueError, match="unknown finding 'Pneumonitis'"):
        parse_finding_labels("Effusion|Pneumonitis")
    with pytest.raises(ValueError, match="mixes"):
        parse_finding_labels("No Finding|Mass")
    assert canonical_finding("Infiltrate") == "Infiltration"
