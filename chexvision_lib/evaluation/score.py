"""Score a predictions file written by any tool against NIH's metadata: `chexvision score`.

Accepted predictions (CSV, optionally gzipped), one row per image:

- an image column named `Image Index`, `image_id`, `image`, `filename` or `path` (any case, spaces
  or underscores); its values are matched to the metadata by file name, so `images_001/x.png`
  is `x.png`. Several image columns are fine when they name the same files;
- one score column per finding, named as the finding with or without a `prob_` prefix, in any
  case, with spaces or underscores (`Pleural Thickening`, `prob_pleural_thickening`); any subset
  of the 14 findings;
- optionally an abnormal column: `Abnormal` / `prob_Abnormal` (the probability of any finding) or
  `No Finding` (its probability p, scored as 1 - p). Without one the abnormal score is DERIVED by
  the rule `ABNORMAL_RULE` (the highest finding probability of the image) and metrics.json says so
  ("abnormal_derived": true);
- CheXVision's own columns (patient, age, sex, view, split, label_<output>) are ignored: labels,
  patients, age, sex and view always come from the metadata.

Scores must be finite numbers in [0, 1]; values outside [0, 1] are taken for logits and refused
unless `logits=True` asks for the sigmoid. An unknown column, a duplicated image, an empty,
NaN or non-numeric score and an image absent from the metadata are errors that name the file, the
row (1 = the header) or the column; `skip_unknown` counts and skips images absent from the
metadata instead.

Which split the images come from is checked against NIH's split lists (given, or found beside the
metadata): results on images in train_val_list.txt, which a model may have trained on, are not
test results, and metrics.json, the figures and the summary say so.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit

from chexvision_lib.core.atomic_files import write_json_atomic
from chexvision_lib.core.hashing import file_sha256
from chexvision_lib.core.labels import ABNORMAL, ALIASES, FINDINGS, NO_FINDING, OUTPUTS, UNKNOWN
from chexvision_lib.core.predictions import (
    METADATA_COLUMNS,
    label_column,
    predictions_frame,
    prob_column,
)
from chexvision_lib.core.text_files import read_table
from chexvision_lib.data.nih_index import read_data_entry
from chexvision_lib.data.provenance import (
    KNOWN_DATA_ENTRY_SHA256,
    OFFICIAL_SPLIT_FILES,
    OFFICIAL_SPLIT_SHA256,
    content_sha256,
)
from chexvision_lib.data.splits import read_split_list
from chexvision_lib.evaluation import label_sets
from chexvision_lib.evaluation.compare import compare_predictions
from chexvision_lib.evaluation.evaluate import (
    _clean,
    metrics_from_predictions,
    subgroups_from_predictions,
)

# How the abnormal score is derived when the predictions have no abnormal column.
ABNORMAL_RULE = "max of the finding probabilities given"
# Image columns, normalised (see `_key`), in the order one is chosen when several are present.
IMAGE_KEYS = ("image_index", "image_id", "image", "filename", "path")
PROB_PREFIX = "prob_"
# Columns of CheXVision's own predictions.csv that scoring ignores (the metadata supplies them).
IGNORED_KEYS = frozenset(
    {*(c for c in METADATA_COLUMNS if c != "image_id"), "split"}
    | {label_column(n).lower() for n in OUTPUTS}
)
SPLIT_LIST_NAMES = ("train_val_list.txt", "test_list.txt")
# split_check verdicts; those other than all_test mean "not (only) test results".
VERDICTS = ("all_test", "mixed", "train_val_only", "not_all_test", "none_in_train_val", "unchecked")
OUTPUT_FILES = ("metrics.json", "predictions.csv", "subgroups.csv")


def _key(name: str) -> str:
    """A column name as matched: lower case, runs of spaces, hyphens and underscores as one '_'."""
    return re.sub(r"[\s_\-]+", "_", str(name).strip()).lower()


FINDING_KEYS: dict[str, str] = {_key(f): f for f in FINDINGS} | {
    _key(alias): name for alias, name in ALIASES.items()
}
ABNORMAL_KEYS: dict[str, bool] = {_key(ABNORMAL): False, _key(NO_FINDING): True}  # True: 1 - p


@dataclass
class ParsedPredictions:
    """A predictions file read into our terms: image names, the 15 scores, where each came from."""

    path: Path
    image_id: pd.Series  # file names, one per row
    rows: np.ndarray  # the CSV row of each entry (1 = header)
    probs: np.ndarray  # (n, 15) probabilities in OUTPUTS order; NaN for findings not given
    columns: dict[str, str]  # output -> the file's column it was read from
    image_column: str
    abnormal_derived: bool
    abnormal_source: str  # the column (and "1 - p" for No Finding) or the derivation rule
    logits: bool
    ignored_columns: list[str] = field(default_factory=list)

    @property
    def findings(self) -> list[str]:
        return [f for f in FINDINGS if f in self.columns]


# ----------------------------------------------------------------------------------------------
# Reading a predictions file of any tool
# ----------------------------------------------------------------------------------------------


def _classify_columns(path: Path, columns: list[str]) -> tuple[list[str], dict, list[str]]:
    """(image columns by priority, {output or NO_FINDING: column}, ignored columns)."""
    images: dict[str, str] = {}
    scores: dict[str, str] = {}
    ignored: list[str] = []
    for column in columns:
        key = _key(column)
        stripped = key.removeprefix(PROB_PREFIX)
        if key in IMAGE_KEYS:
            target, store = key, images
        elif stripped in FINDING_KEYS:
            target, store = FINDING_KEYS[stripped], scores
        elif stripped in ABNORMAL_KEYS:
            target, store = (NO_FINDING if ABNORMAL_KEYS[stripped] else ABNORMAL), scores
        elif key in IGNORED_KEYS:
            ignored.append(column)
            continue
        else:
            hint = (
                " (a column without a header: an index written with the rows?)"
                if str(column).startswith("Unnamed:")
                else ""
            )
            raise ValueError(
                f"{path}, column {column!r}: unknown column name{hint}; expected an image column "
                f"({', '.join(IMAGE_KEYS)}), one score column per finding named as the finding "
                f"with or without a {PROB_PREFIX!r} prefix ({', '.join(FINDINGS)}), and optionally "
                f"{ABNORMAL!r} or {NO_FINDING!r}"
            )
        if target in store:
            raise ValueError(
                f"{path}: columns {store[target]!r} and {column!r} both give "
                f"{target.replace('_', ' ') if store is images else target!r}; keep one"
            )
        store[target] = column
    if ABNORMAL in scores and NO_FINDING in scores:
        raise ValueError(
            f"{path}: columns {scores[ABNORMAL]!r} and {scores[NO_FINDING]!r} both give the "
            "abnormal score (No Finding as 1 - p); keep one"
        )
    if not images:
        raise ValueError(
            f"{path}: no image column; expected one named {', '.join(IMAGE_KEYS)} (found {columns})"
        )
    if not scores:
        raise ValueError(
            f"{path}: no score column; expected columns named as the findings "
            f"({', '.join(FINDINGS)}), with or without a {PROB_PREFIX!r} prefix, or {ABNORMAL!r}"
        )
    ordered_images = [images[k] for k in IMAGE_KEYS if k in images]
    return ordered_images, scores, ignored


def _file_names(path: Path, raw: pd.DataFrame, column: str) -> pd.Series:
    """The file name of each entry of an image column (`a/b/x.png` and `a\\b\\x.png` -> `x.png`)."""
    names = raw[column].astype(str).str.strip().str.replace(r"^.*[\\/]", "", regex=True)
    empty = names.eq("").to_numpy()
    if empty.any():
        row = int(empty.nonzero()[0][0])
        raise ValueError(f"{path}, row {row + 2}, column {column!r}: no image name")
    return names


def _image_names(path: Path, raw: pd.DataFrame, columns: list[str]) -> pd.Series:
    names = _file_names(path, raw, columns[0])
    for other in columns[1:]:
        differ = (_file_names(path, raw, other) != names).to_numpy()
        if differ.any():
            row = int(differ.nonzero()[0][0])
            raise ValueError(
                f"{path}, row {row + 2}: columns {columns[0]!r} and {other!r} name different "
                f"images ({raw[columns[0]].iloc[row]!r} vs {raw[other].iloc[row]!r})"
            )
    duplicated = names.duplicated().to_numpy()
    if duplicated.any():
        first = int(duplicated.nonzero()[0][0])
        earlier = int((names == names.iloc[first]).to_numpy().nonzero()[0][0])
        raise ValueError(
            f"{path}, row {first + 2}: image {names.iloc[first]!r} appears twice "
            f"(also row {earlier + 2}); one row per image"
        )
    return names


def _score_values(path: Path, raw: pd.DataFrame, column: str) -> np.ndarray:
    text = raw[column].astype(str).str.strip()
    values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(bad.nonzero()[0][0])
        shown = text.iloc[row]
        what = (
            "empty"
            if shown == ""
            else "NaN"
            if shown.lower() in ("nan", "-nan", "+nan")
            else "not finite"
            if np.isinf(values[row])
            else "not a number"
        )
        raise ValueError(
            f"{path}, row {row + 2}, column {column!r}: score {shown!r} is {what}; every score "
            "must be a finite number"
        )
    return values


def _check_range(path: Path, values: dict[str, np.ndarray], logits: bool) -> None:
    """Probabilities lie in [0, 1]; anything else is taken for logits, refused unless asked."""
    outside = {c: (v < 0) | (v > 1) for c, v in values.items()}
    if logits:
        if not any(o.any() for o in outside.values()):
            raise ValueError(
                f"{path}: --logits was given but every score lies in [0, 1]: these look like "
                "probabilities already; leave out --logits"
            )
        return
    for column, mask in outside.items():
        if mask.any():
            row = int(mask.nonzero()[0][0])
            raise ValueError(
                f"{path}, row {row + 2}, column {column!r}: score {values[column][row]:g} lies "
                f"outside [0, 1] ({int(mask.sum())} such rows): these look like logits, not "
                "probabilities; pass --logits to apply the sigmoid"
            )


def read_any_predictions(path: str | Path, *, logits: bool = False) -> ParsedPredictions:
    """Read a predictions file in any accepted format (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: predictions file not found")
    raw = read_table(path, dtype=str, keep_default_na=False)
    # An unnamed, entirely empty column: the trailing comma some tools end each line with.
    raw = raw.loc[
        :,
        [
            c
            for c in raw.columns
            if not (str(c).startswith("Unnamed:") and raw[c].astype(str).str.strip().eq("").all())
        ],
    ]
    if raw.empty:
        raise ValueError(f"{path}: no rows (expected a header row and one row per image)")
    image_columns, score_columns, ignored = _classify_columns(path, list(raw.columns))
    names = _image_names(path, raw, image_columns)
    values = {column: _score_values(path, raw, column) for column in score_columns.values()}
    _check_range(path, values, logits)
    if logits:
        values = {column: expit(v) for column, v in values.items()}
    probs = np.full((len(raw), len(OUTPUTS)), np.nan)
    columns: dict[str, str] = {}
    for target, column in score_columns.items():
        if target == NO_FINDING:
            probs[:, OUTPUTS.index(ABNORMAL)] = 1.0 - values[column]
            columns[ABNORMAL] = column
        else:
            probs[:, OUTPUTS.index(target)] = values[column]
            columns[target] = column
    derived = ABNORMAL not in columns
    if derived:
        given = [OUTPUTS.index(f) for f in FINDINGS if f in columns]
        probs[:, OUTPUTS.index(ABNORMAL)] = probs[:, given].max(axis=1)
        source = f"derived: {ABNORMAL_RULE} ({len(given)} of {len(FINDINGS)} findings)"
    elif NO_FINDING in score_columns:
        source = f"1 - {score_columns[NO_FINDING]}"
    else:
        source = score_columns[ABNORMAL]
    return ParsedPredictions(
        path=path,
        image_id=names.reset_index(drop=True),
        rows=np.arange(len(raw)) + 2,
        probs=probs,
        columns=columns,
        image_column=image_columns[0],
        abnormal_derived=derived,
        abnormal_source=source,
        logits=logits,
        ignored_columns=ignored,
    )


# ----------------------------------------------------------------------------------------------
# Joining with the metadata
# ----------------------------------------------------------------------------------------------


def _isin(names: pd.Series, among: Iterable[str]) -> np.ndarray:
    """names.isin(among) as a boolean array, through a Python set: pandas' Arrow-backed string
    isin is ~100x slower on these sizes (0.3 s per call for 25k names in 112k)."""
    among = among if isinstance(among, set | frozenset) else set(among)
    return np.fromiter((name in among for name in names.tolist()), dtype=bool, count=len(names))


def join_metadata(
    parsed: ParsedPredictions,
    metadata: pd.DataFrame,
    metadata_path: str | Path,
    *,
    skip_unknown: bool = False,
) -> tuple[pd.DataFrame, int]:
    """Our predictions frame (metadata, prob_*, label_*) for the images the metadata knows, and
    how many were skipped (absent from the metadata; an error unless `skip_unknown`)."""
    known = _isin(parsed.image_id, metadata["image_id"])
    n_unknown = int((~known).sum())
    if n_unknown and not skip_unknown:
        first = int((~known).nonzero()[0][0])
        raise ValueError(
            f"{parsed.path}, row {parsed.rows[first]}: image {parsed.image_id.iloc[first]!r} is "
            f"not in {metadata_path} ({n_unknown} of {len(known)} images are not); pass "
            "--skip-unknown to count and skip them"
        )
    if not known.any():
        raise ValueError(f"{parsed.path}: none of its {len(known)} images is in {metadata_path}")
    table = (
        metadata.set_index("image_id")
        .loc[parsed.image_id[known].to_numpy()]
        .rename_axis("image_id")
        .reset_index()
    )
    labels = table[list(OUTPUTS)].to_numpy(dtype=np.int64)
    meta = table.loc[:, list(METADATA_COLUMNS)].astype({"patient": str, "image_id": str})
    return predictions_frame(meta, parsed.probs[known], labels), n_unknown


# ----------------------------------------------------------------------------------------------
# Which split the images come from
# ----------------------------------------------------------------------------------------------


def find_split_lists(metadata_path: str | Path) -> list[Path]:
    """NIH's split lists beside the metadata file, if they are there."""
    folder = Path(metadata_path).parent
    return [folder / name for name in SPLIT_LIST_NAMES if (folder / name).is_file()]


def _identify_list(path: Path) -> tuple[str, bool]:
    """("test" or "train_val", whether it is NIH's official file by SHA-256)."""
    digest = file_sha256(path)
    for key, official in OFFICIAL_SPLIT_SHA256.items():
        if digest == official:
            return ("test" if key == "test_list" else "train_val"), True
    name = path.name.lower()
    if "test" in name:
        return "test", False
    if "train" in name or "val" in name:
        return "train_val", False
    raise ValueError(
        f"{path}: cannot tell whether this split list is a test or a train/val list (it is not "
        "NIH's official test_list.txt or train_val_list.txt by SHA-256); name it with 'test' or "
        "'train'/'val' in the file name"
    )


def _verdict(n: int, in_test: int, in_train_val: int, kinds: set[str]) -> tuple[str, str]:
    def share(k: int) -> str:
        return f"{k:,} of {n:,} images"

    not_test = (
        "a model trained on NIH's train_val split may have trained on them: results on them are "
        "NOT test results"
    )
    if not kinds:
        return "unchecked", (
            "no split list given or found beside the metadata: whether these images are test "
            "images was NOT checked"
        )
    if in_train_val == n:
        return "train_val_only", f"WARNING: all {n:,} images are in train_val_list.txt; {not_test}"
    if in_train_val:
        return "mixed", f"WARNING: {share(in_train_val)} are in train_val_list.txt; {not_test}"
    if "test" in kinds and in_test == n:
        return "all_test", f"all {n:,} images are in test_list.txt"
    if "test" in kinds:
        return "not_all_test", (
            f"WARNING: {share(n - in_test)} are not in test_list.txt (they may be training "
            "images): results on them are NOT test results"
        )
    return "none_in_train_val", (
        "no image is in train_val_list.txt; no test list was given to confirm they are test images"
    )


def split_check(image_ids: pd.Series, split_lists: list[str | Path]) -> dict:
    """How many images each split list holds, and a verdict (VERDICTS) with a message."""
    listed: dict[str, set[str]] = {}
    lists = []
    for path in map(Path, split_lists):
        kind, official = _identify_list(path)
        if kind in listed:
            raise ValueError(f"{path}: a second {kind} split list; give one test and one train_val")
        names = read_split_list(path)
        listed[kind] = set(names)
        lists.append({"path": str(path), "kind": kind, "official": official, "images": len(names)})
    n = len(image_ids)
    in_test = int(_isin(image_ids, listed.get("test", ())).sum())
    in_train_val = int(_isin(image_ids, listed.get("train_val", ())).sum())
    verdict, message = _verdict(n, in_test, in_train_val, set(listed))
    if verdict == "all_test":
        official = next(entry["official"] for entry in lists if entry["kind"] == "test")
        message += (
            " (NIH's official test list)"
            if official
            else f" (not NIH's official {OFFICIAL_SPLIT_FILES['test_list']}: its SHA-256 differs)"
        )
    return {
        "in_test_list": in_test,
        "in_train_val_list": in_train_val,
        "in_no_list": int((~_isin(image_ids, set().union(*listed.values()))).sum()),
        "n_images": n,
        "verdict": verdict,
        "message": message,
        "lists": lists,
    }


def split_name(check: dict) -> tuple[str, str]:
    """(metrics' "split", the description figures carry) for a split check."""
    verdict = check["verdict"]
    if verdict == "all_test":
        official = all(e["official"] for e in check["lists"] if e["kind"] == "test")
        return "test", "official test split (test_list.txt)" if official else "test split"
    if verdict == "train_val_only":
        return "train_val", "train_val images — NOT a test result"
    if verdict == "mixed":
        return "mixed", (
            f"{check['in_train_val_list']:,} of {check['n_images']:,} images from train_val — "
            "NOT a test result"
        )
    if verdict == "not_all_test":
        return "unlisted", "images not all in test_list.txt — NOT a test result"
    return "unchecked", "split not checked against NIH's lists"


# ----------------------------------------------------------------------------------------------
# Other label sets, a reference model, calibration
# ----------------------------------------------------------------------------------------------


def _label_files(google: str | Path | None, binary: list[str | Path]) -> list[tuple[str, Path]]:
    files = [("google", Path(google))] if google is not None else []
    return files + [("binary", Path(b)) for b in binary]


def expert_labels(
    frame: pd.DataFrame,
    google: str | Path | None,
    binary: list[str | Path],
    *,
    n_resamples: int,
    seed: int = 0,
) -> tuple[pd.DataFrame, list[dict]]:
    """AUCs against Google's expert labels and Tang-style binary lists, on the images that overlap.

    Returns one row per label (file, label, n_images, positives, auc, ci_low, ci_high, scored_by)
    and one entry per file (file, kind, n_overlap, not_scored). A Google category is scored only
    when every finding it maps to has probabilities (the max over a subset would be another
    score); a file that shares no image with the predictions gives no rows, only its entry.
    """
    tables, files = [], []
    for kind, path in _label_files(google, binary):
        if kind == "google":
            labels = label_sets.read_google_labels(path)
        else:
            labels = label_sets.read_binary_labels(path)
        overlap = int(_isin(frame["image_id"], labels["image_id"]).sum())
        entry = {"file": str(path), "kind": kind, "n_overlap": overlap, "not_scored": {}}
        files.append(entry)
        if not overlap:
            continue
        if kind == "google":
            table = label_sets.score_against_google(frame, labels, n_resamples, seed)
            for category, findings in label_sets.GOOGLE_MAPPING.items():
                missing = [f for f in findings if frame[prob_column(f)].isna().all()]
                if missing:
                    entry["not_scored"][category] = f"no probabilities for {', '.join(missing)}"
            table = table[~table["label"].isin(list(entry["not_scored"]))]
        else:
            table = label_sets.score_against_binary(frame, labels, n_resamples, seed)
            table["scored_by"] = prob_column(ABNORMAL)
        table.insert(0, "file", path.name)
        tables.append(table)
    columns = ["file", "label", "n_images", "positives", "auc", "ci_low", "ci_high", "scored_by"]
    rows = (
        pd.concat(tables, ignore_index=True)[columns] if tables else pd.DataFrame(columns=columns)
    )
    return rows, files


def compare_with_reference(frame: pd.DataFrame, reference: pd.DataFrame, path: Path) -> dict:
    shared = int(_isin(frame["image_id"], reference["image_id"]).sum())
    if not shared:
        raise ValueError(f"{path}: the reference predictions share no image with the predictions")
    table = compare_predictions(frame, reference)
    return {"file": str(path), "n_shared_images": shared, "table": table}


# ----------------------------------------------------------------------------------------------
# The whole command
# ----------------------------------------------------------------------------------------------


@dataclass
class ScoreResult:
    metrics: dict
    frame: pd.DataFrame  # our predictions frame, as written to predictions.csv
    folder: Path
    comparison: pd.DataFrame | None = None
    expert: pd.DataFrame | None = None


def _scored_only(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with the labels of outputs that have no probabilities set to UNKNOWN, as
    `metrics_from_predictions` expects (it refuses known labels without scores). predictions.csv
    keeps the real labels, so that it compares with a model that scored those findings."""
    missing = [n for n in OUTPUTS if frame[prob_column(n)].isna().all()]
    return frame.assign(**{label_column(n): UNKNOWN for n in missing})


def default_out(predictions: str | Path) -> Path:
    """PREDICTIONS.csv -> PREDICTIONS_score/ beside it."""
    path = Path(predictions)
    stem = re.sub(r"(\.csv)?(\.gz)?$", "", path.name, flags=re.IGNORECASE)
    return path.with_name(f"{stem}_score")


def _source_entry(parsed: ParsedPredictions, n_skipped: int) -> dict:
    return {
        "path": str(parsed.path),
        "sha256": file_sha256(parsed.path),
        "rows": len(parsed.image_id),
        "image_column": parsed.image_column,
        "columns": parsed.columns,
        "findings_given": parsed.findings,
        "findings_missing": [f for f in FINDINGS if f not in parsed.columns],
        "logits": parsed.logits,
        "ignored_columns": parsed.ignored_columns,
        "skipped_not_in_metadata": n_skipped,
    }


def _metadata_entry(path: Path) -> dict:
    digest = content_sha256(path)
    return {
        "path": str(path),
        "content_sha256": digest,
        "release": KNOWN_DATA_ENTRY_SHA256.get(digest),
    }


def score_predictions(
    predictions: str | Path,
    metadata: str | Path,
    *,
    split_lists: list[str | Path] | None = None,
    google: str | Path | None = None,
    binary: list[str | Path] | None = None,
    reference: str | Path | None = None,
    out: str | Path | None = None,
    n_resamples: int = 2000,
    logits: bool = False,
    reference_logits: bool = False,
    skip_unknown: bool = False,
    seed: int = 0,
    prevalence: float | None = None,
) -> ScoreResult:
    """Score a predictions file of any tool; write OUT/metrics.json, predictions.csv (our schema,
    so `compare`, `labels` and the figures read it), subgroups.csv, and expert_labels.csv /
    comparison.csv when label files / a reference are given. Figures are the CLI's (reporting sits
    above this layer). `split_lists=None` uses the lists found beside the metadata."""
    metadata = Path(metadata)
    folder = Path(out) if out is not None else default_out(predictions)
    if (folder / "predictions.csv").resolve() == Path(predictions).resolve():
        raise ValueError(
            f"{predictions}: scoring would overwrite it with {folder / 'predictions.csv'}; "
            "pass another --out folder"
        )
    binary = list(binary or [])
    parsed = read_any_predictions(predictions, logits=logits)
    table = read_data_entry(metadata)
    frame, n_skipped = join_metadata(parsed, table, metadata, skip_unknown=skip_unknown)
    lists = find_split_lists(metadata) if split_lists is None else list(split_lists)
    check = split_check(frame["image_id"], lists)
    split, description = split_name(check)

    metrics = metrics_from_predictions(
        _scored_only(frame),
        [None] * len(OUTPUTS),
        split=split,
        n_resamples=n_resamples,
        seed=seed,
        prevalence=prevalence,
    )
    metrics["split_description"] = description
    metrics["split_check"] = check
    metrics["abnormal_derived"] = parsed.abnormal_derived
    metrics["abnormal_source"] = parsed.abnormal_source
    metrics["thresholds_note"] = "at 0.5 only: no validation thresholds come with these scores"
    metrics["source"] = {
        "predictions": _source_entry(parsed, n_skipped),
        "metadata": _metadata_entry(metadata),
    }
    if parsed.abnormal_derived and ABNORMAL in metrics.get("calibration", {}).get("outputs", {}):
        metrics["calibration"]["outputs"][ABNORMAL]["note"] = (
            "derived as the max of the finding probabilities: not a calibrated probability of "
            "abnormality"
        )

    expert = None
    if google is not None or binary:
        expert, files = expert_labels(frame, google, binary, n_resamples=n_resamples, seed=seed)
        metrics["expert_labels"] = {"files": files, "rows": expert.to_dict("records")}
    comparison = None
    if reference is not None:
        ref = read_any_predictions(reference, logits=reference_logits)
        ref_frame, ref_skipped = join_metadata(ref, table, metadata, skip_unknown=skip_unknown)
        found = compare_with_reference(frame, ref_frame, Path(reference))
        comparison = found["table"]
        metrics["reference"] = {
            "file": found["file"],
            "n_shared_images": found["n_shared_images"],
            "abnormal_derived": ref.abnormal_derived,
            "source": _source_entry(ref, ref_skipped),
            "test": "DeLong (1988), two-sided; Holm across the findings",
            "rows": comparison.to_dict("records"),
        }
    metrics = _clean(metrics)

    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "predictions.csv", index=False)
    subgroups_from_predictions(frame).to_csv(folder / "subgroups.csv", index=False)
    if expert is not None:
        expert.to_csv(folder / "expert_labels.csv", index=False)
    if comparison is not None:
        comparison.to_csv(folder / "comparison.csv", index=False)
    write_json_atomic(folder / "metrics.json", metrics)
    return ScoreResult(metrics, frame, folder, comparison, expert)


def summary_lines(metrics: dict) -> list[str]:
    """What `chexvision score` prints besides evaluate's summary line."""
    lines = []
    if metrics.get("abnormal_derived"):
        rule = metrics["abnormal_source"].removeprefix("derived: ")
        lines.append(f"abnormal score DERIVED (the predictions have no abnormal column): {rule}")
    skipped = metrics["source"]["predictions"]["skipped_not_in_metadata"]
    if skipped:
        lines.append(f"skipped {skipped:,} image(s) not in the metadata (--skip-unknown)")
    lines.append(metrics["split_check"]["message"])
    return lines
