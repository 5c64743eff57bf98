"""Published reference figures, with the split each was measured on (one place; used by the
figures and the model card). Comparing against them is only fair where the splits match."""

from __future__ import annotations

from chexvision_lib.core.labels import FINDINGS

# Rajpurkar et al. 2017 (CheXNet), Table 2: DenseNet-121, random (non-official) 70/10/20 split by
# patient of the 2017 release. Mean 0.841.
CHEXNET_2017 = dict(
    zip(
        FINDINGS,
        (
            0.8094,
            0.9248,
            0.8638,
            0.7345,
            0.8676,
            0.7802,
            0.7680,
            0.8887,
            0.7901,
            0.8878,
            0.9371,
            0.8047,
            0.8062,
            0.9164,
        ),
        strict=True,
    )
)
REFERENCES = [
    {
        "name": "CheXNet (Rajpurkar et al. 2017)",
        "macro_auc": 0.841,
        "split": "random patient split of the authors (not the official test list)",
    },
    {
        "name": "Original CheXVision, DenseNet-121",
        "macro_auc": 0.8459,
        "split": "validation split that leaks patients (no test-split figure)",
    },
    {
        "name": "Original CheXVision, scratch SE-ResNet",
        "macro_auc": 0.8141,
        "split": "validation split that leaks patients (no test-split figure)",
    },
    {
        "name": "Best published results on the official split",
        "macro_auc": 0.82,
        "split": "official test_list.txt (approximate)",
    },
]
