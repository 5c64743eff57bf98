"""Is the indexed data NIH's ChestX-ray14 release? Decided from hashes recorded at index time.

`build_nih_index` (and the Hub and binary indexes) record in their `source` dict the absolute
paths of the files they read, whether the folder holds the synthetic set's marker, and the SHA-256
of the Data_Entry CSV and both split lists. That dict travels prepare -> cache.json -> the run's
config.json ("data_source") -> the model folder, so a card can be built anywhere, later, without
the data. `verify_nih_source` compares the recorded hashes with NIH's official files below: a card
may call its data "NIH ChestX-ray14" and its test split "official test_list.txt" only when they
match.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from chexvision_lib.core.hashing import file_sha256
from chexvision_lib.data.synthetic import MARKER_NAME

# SHA-256 of NIH's official split lists (`sha256sum train_val_list.txt test_list.txt` on the
# NIH Clinical Center release, as kept in ../shared/realdata/nih/; tests/test_provenance.py
# re-checks them against those files). Kaggle's nih-chest-xrays/data copy ships the same two
# lists, which is how a Kaggle copy is recognised: its Data_Entry_2017.csv differs (see below).
OFFICIAL_SPLIT_SHA256: dict[str, str] = {
    "train_val_list": "61fbe896321c1c1c8b75f3e4f3a08e4fef6486d95ef8a667c31d4d60dca6cb81",
    "test_list": "38ca5ef7f756092946f57c1a59faca882ed589a1ab1f72590b45dc06c6d5e1cc",
}
OFFICIAL_SPLIT_FILES: dict[str, str] = {
    "train_val_list": "train_val_list.txt",
    "test_list": "test_list.txt",
}
# Images each official list names (86,524 + 25,596 = the release's 112,120).
OFFICIAL_SPLIT_IMAGES: dict[str, int] = {"train_val_list": 86_524, "test_list": 25_596}

# SHA-256 of the uncompressed content of the Data_Entry CSV releases verified here. The v2020 CSV
# is NIH's Data_Entry_2017_v2020.csv (../shared/realdata/nih/Data_Entry_2017_v2020.csv.gz,
# decompressed: `zcat ... | sha256sum`). Kaggle's 2017 copy (Data_Entry_2017.csv: "Patient
# Gender" header, a trailing comma on every line) has other bytes and is not listed, as no copy
# was at hand to hash; a Kaggle copy is recognised by its split lists, and its CSV is reported as
# "not a known release" without failing verification.
KNOWN_DATA_ENTRY_SHA256: dict[str, str] = {
    "dc1d2df67fdc1c5a7601d48699cda2b13dc2c4841488b4183dcf04884dbaca11": (
        "NIH Data_Entry_2017_v2020.csv"
    ),
}

NIH_KINDS = ("nih", "hub_parquet")


def content_sha256(path: str | Path) -> str:
    """SHA-256 of a file's content: of the decompressed bytes for a .gz, else of the file."""
    path = Path(path)
    if path.suffix != ".gz":
        return file_sha256(path)
    digest = hashlib.sha256()
    with gzip.open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def holds_synthetic_marker(folders: Iterable[str | Path]) -> bool:
    """Whether any of `folders` holds the marker file that `write_synthetic_nih` writes."""
    return any((Path(folder) / MARKER_NAME).is_file() for folder in folders)


def data_entry_release(source: dict[str, Any]) -> str | None:
    """The known CSV release the recorded Data_Entry hash belongs to, or None."""
    digests = source.get("sha256") or {}
    for digest in (source.get("data_entry_csv_content_sha256"), digests.get("data_entry_csv")):
        if digest in KNOWN_DATA_ENTRY_SHA256:
            return KNOWN_DATA_ENTRY_SHA256[digest]
    return None


def verify_nih_source(source: dict[str, Any]) -> dict[str, Any]:
    """Whether a recorded `source` is NIH's ChestX-ray14 with its official split.

    Verified only when the source is of an NIH kind, is recorded as not synthetic, and the
    SHA-256 of both split lists equal the official ones. Returns {"verified": bool, "reasons":
    [why not, in words without local paths], "data_entry_release": the known CSV release or None,
    "notes": [...]}. Only recorded values are read: the data folder may be long gone.
    """
    reasons: list[str] = []
    kind = source.get("kind")
    if kind not in NIH_KINDS:
        reasons.append(f"the data source is of kind {kind!r}, not an NIH ChestX-ray14 index")
    synthetic = source.get("synthetic")
    if synthetic is True:
        reasons.append(
            f"the data folder holds {MARKER_NAME}: it is the generated synthetic set, not "
            "radiographs"
        )
    elif synthetic is None:
        reasons.append(
            "whether the data was synthetic was not recorded when it was indexed (a run made "
            "before chexvision recorded it, or from a folder that has since moved)"
        )
    elif synthetic is not False:
        reasons.append(f"the recorded 'synthetic' value {synthetic!r} is not true or false")
    digests = source.get("sha256") or {}
    for key, official in OFFICIAL_SPLIT_SHA256.items():
        name = OFFICIAL_SPLIT_FILES[key]
        recorded = digests.get(key)
        if recorded is None:
            reasons.append(f"no SHA-256 of {name} was recorded")
        elif recorded != official:
            reasons.append(
                f"{name} has SHA-256 {recorded}, not that of NIH's official {name} ({official})"
            )
    release = data_entry_release(source)
    notes = []
    if release is None and digests.get("data_entry_csv"):
        notes.append(
            "the Data_Entry CSV is not a release whose SHA-256 chexvision records (Kaggle's 2017 "
            "copy is one such); its labels were used as read"
        )
    return {
        "verified": not reasons,
        "reasons": reasons,
        "data_entry_release": release,
        "notes": notes,
    }
