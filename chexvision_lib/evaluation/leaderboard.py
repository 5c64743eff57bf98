"""A leaderboard: several models' predictions scored on the images they all share.

Each entry is a run folder (its RUN/<split>/predictions.csv), a predictions.csv in CheXVision's
schema (labels included), or a predictions CSV of any other tool (`score.read_any_predictions`;
labels and patients then come from the Data_Entry metadata). Every entry is restricted to the
images all entries share, in one order, so the patient-bootstrap resamples are the same for all;
entries that disagree on an image's labels or patient are refused, naming the image.

Per entry: macro AUC over the findings every entry scores and the binary (Abnormal) AUC, each with
a patient-bootstrap 95% CI; Brier and ECE of the Abnormal probability; AUCs against Google's expert
labels where the shared images have them; and DeLong's test against the first entry: the binary
AUC difference (a single test) and each finding's, Holm-adjusted across the findings of that
entry's comparison (`compare.compare_predictions`). Which split the shared images come from is
checked against NIH's split lists (`score.split_check`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from chexvision_lib.core.disclaimer import DISCLAIMER
from chexvision_lib.core.labels import ABNORMAL, FINDINGS, OUTPUTS, UNKNOWN
from chexvision_lib.core.predictions import label_column, prob_column, read_predictions
from chexvision_lib.core.text_files import read_table
from chexvision_lib.data.nih_index import read_data_entry
from chexvision_lib.evaluation.compare import compare_predictions, predictions_path
from chexvision_lib.evaluation.evaluate import metrics_from_predictions
from chexvision_lib.evaluation.label_sets import GOOGLE_MAPPING
from chexvision_lib.evaluation.metrics import bootstrap_auc
from chexvision_lib.evaluation.score import (
    ABNORMAL_RULE,
    expert_labels,
    find_split_lists,
    join_metadata,
    read_any_predictions,
    split_check,
)

OUR_COLUMNS = ("image_id", "patient", prob_column(ABNORMAL), label_column(ABNORMAL))
RUN_SPLITS = ("test", "val")
ALPHA = 0.05  # the level "findings differing" counts at (Holm-adjusted p <= ALPHA)
OUTPUT_FILES = ("leaderboard.csv", "leaderboard.md", "leaderboard_delong.csv")


@dataclass
class Entry:
    """One entry read into our predictions schema (real labels, NaN probabilities where the entry
    scores no such output)."""

    name: str
    source: Path  # what the user named: a run folder or a file
    path: Path  # the predictions file read
    kind: str  # "run", "chexvision" (our schema) or "foreign" (any tool, joined with metadata)
    frame: pd.DataFrame
    n_given: int  # images in the file (before the intersection)
    abnormal_derived: bool = False
    skipped: int = 0  # images absent from the metadata, skipped (--skip-unknown)


@dataclass
class Leaderboard:
    table: pd.DataFrame  # one row per entry, best first: what leaderboard.csv holds
    delong: pd.DataFrame  # one row per (entry, output) tested against the reference
    entries: list[Entry]
    reference: str  # the first entry's name: DeLong tests are against it
    n_images: int
    n_patients: int
    common_findings: list[str]
    rank_by: str  # "macro_auc" or "binary_auc"
    split_check: dict
    n_resamples: int
    seed: int
    google: dict | None = None  # {"file", "n_overlap", "categories"} when --google was given
    per_finding: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def warning(self) -> str | None:
        """The split warning, when the shared images are not all NIH's official test images."""
        check = self.split_check
        if check["verdict"] == "all_test" and all(
            e["official"] for e in check["lists"] if e["kind"] == "test"
        ):
            return None
        message = check["message"]
        return message if message.startswith("WARNING") else f"WARNING: {message}"


# ----------------------------------------------------------------------------------------------
# Reading the entries
# ----------------------------------------------------------------------------------------------


def _stem(path: Path) -> str:
    return re.sub(r"(\.csv)?(\.gz)?$", "", path.name, flags=re.IGNORECASE)


def default_names(sources: list[str | Path]) -> list[str]:
    """A run folder's name, a file's stem; `parent/stem` where stems collide, then `#k`."""
    paths = [Path(s) for s in sources]
    names = [p.name if p.is_dir() else _stem(p) for p in paths]
    for k, path in enumerate(paths):
        if names.count(names[k]) > 1 and not path.is_dir():
            names[k] = f"{path.parent.name}/{_stem(path)}" if path.parent.name else names[k]
    seen: dict[str, int] = {}
    for k, name in enumerate(names):
        if names.count(name) > 1:
            seen[name] = seen.get(name, 0) + 1
            names[k] = f"{name}#{seen[name]}"
    return names


def _patient_keys(values: pd.Series) -> pd.Series:
    """Patients as compared: stripped text, numbers without leading zeros (`00012` is `12`)."""
    text = values.astype(str).str.strip()
    return text.map(lambda v: str(int(v)) if v.isdigit() else v)


def _check_ours(path: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Our schema, checked: all 30 columns, one row per image, probabilities in [0, 1] (or a
    column left empty for an output not scored), labels -1/0/1."""
    missing = [
        c for n in OUTPUTS for c in (prob_column(n), label_column(n)) if c not in frame.columns
    ]
    if missing:
        raise ValueError(f"{path}: a CheXVision predictions file, but missing columns {missing}")
    frame = frame.copy()
    frame["image_id"] = frame["image_id"].astype(str).str.strip()
    duplicated = frame["image_id"].duplicated().to_numpy()
    if duplicated.any():
        row = int(duplicated.nonzero()[0][0])
        raise ValueError(
            f"{path}, row {row + 2}: image {frame['image_id'].iloc[row]!r} appears twice; one row "
            "per image"
        )
    for name in OUTPUTS:
        column = prob_column(name)
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
        if not np.isnan(values).all():
            bad = ~np.isfinite(values) | (values < 0) | (values > 1)
            if bad.any():
                row = int(bad.nonzero()[0][0])
                raise ValueError(
                    f"{path}, row {row + 2}, column {column!r}: {frame[column].iloc[row]!r} is not "
                    "a probability in [0, 1]"
                )
        frame[column] = values
        column = label_column(name)
        labels = pd.to_numeric(frame[column], errors="coerce")
        bad = ~labels.isin([UNKNOWN, 0, 1]).to_numpy()
        if bad.any():
            row = int(bad.nonzero()[0][0])
            raise ValueError(
                f"{path}, row {row + 2}, column {column!r}: label {frame[column].iloc[row]!r} is "
                f"not {UNKNOWN}, 0 or 1"
            )
        frame[column] = labels.astype(np.int64)
    return frame


def _is_ours(path: Path) -> bool:
    header = read_table(path, nrows=0)
    return all(c in header.columns for c in OUR_COLUMNS)


def read_entry(
    source: str | Path,
    name: str,
    *,
    split: str = "test",
    metadata: tuple[pd.DataFrame, Path] | None = None,
    skip_unknown: bool = False,
) -> Entry:
    """One entry: a run folder, a predictions.csv in our schema, or any tool's CSV (which needs
    `metadata`, (read_data_entry's table, its path), for labels and patients)."""
    source = Path(source)
    if source.is_dir():
        path, kind = predictions_path(source, split), "run"
    elif source.is_file():
        path, kind = source, "chexvision" if _is_ours(source) else "foreign"
    else:
        raise FileNotFoundError(f"{source}: no such run folder or predictions file")
    if kind != "foreign":
        frame = _check_ours(path, read_predictions(path))
        frame["patient"] = _patient_keys(frame["patient"])
        return Entry(name, source, path, kind, frame, len(frame))
    if metadata is None:
        missing = [c for c in OUR_COLUMNS if c not in read_table(path, nrows=0).columns]
        raise ValueError(
            f"{path}: not a CheXVision predictions file (no {', '.join(missing)}); pass --metadata "
            "Data_Entry_2017*.csv to take its labels and patients from NIH's metadata"
        )
    parsed = read_any_predictions(path)
    table, metadata_path = metadata
    frame, skipped = join_metadata(parsed, table, metadata_path, skip_unknown=skip_unknown)
    frame["patient"] = _patient_keys(frame["patient"])
    return Entry(
        name, source, path, kind, frame, len(parsed.image_id), parsed.abnormal_derived, skipped
    )


def shared_images(entries: list[Entry]) -> list[str]:
    """The images every entry scores, in the first entry's order; an error when there are none."""
    shared = set(entries[0].frame["image_id"])
    for entry in entries[1:]:
        shared &= set(entry.frame["image_id"])
    if not shared:
        counts = ", ".join(f"{e.name} ({e.path}): {e.n_given:,}" for e in entries)
        raise ValueError(f"the {len(entries)} entries share no image (images: {counts})")
    return [i for i in entries[0].frame["image_id"].tolist() if i in shared]


def restrict(entries: list[Entry], shared: list[str]) -> list[pd.DataFrame]:
    """Each entry's frame on the shared images, in one order."""
    return [e.frame.set_index("image_id").loc[shared].reset_index() for e in entries]


def check_agreement(entries: list[Entry], frames: list[pd.DataFrame]) -> None:
    """Refuse entries that disagree with the first on an image's patient or labels."""
    first, reference = frames[0], entries[0]
    columns = ["patient", *(label_column(n) for n in OUTPUTS)]
    for entry, frame in zip(entries[1:], frames[1:], strict=True):
        for column in columns:
            differ = (frame[column].to_numpy() != first[column].to_numpy()).nonzero()[0]
            if differ.size:
                row = int(differ[0])
                what = "patient" if column == "patient" else f"label of {column[6:]}"
                raise ValueError(
                    f"image {first['image_id'].iloc[row]!r}: {entry.name} ({entry.path}) and "
                    f"{reference.name} ({reference.path}) disagree on its {what} "
                    f"({frame[column].iloc[row]!r} vs {first[column].iloc[row]!r}; "
                    f"{differ.size:,} shared image(s) differ so); a leaderboard compares "
                    "predictions of the same images with the same labels"
                )


# ----------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------


def scored_outputs(frame: pd.DataFrame) -> list[str]:
    """Outputs with probabilities and at least one known label."""
    return [
        n
        for n in OUTPUTS
        if frame[prob_column(n)].notna().any() and (frame[label_column(n)] >= 0).any()
    ]


def _only(frame: pd.DataFrame, outputs: list[str]) -> pd.DataFrame:
    """The frame with the labels of other outputs UNKNOWN (metrics refuse labels without scores)."""
    return frame.assign(**{label_column(n): UNKNOWN for n in OUTPUTS if n not in outputs})


def _nan(value: object) -> float:
    return math.nan if value is None else float(value)


def _pair(values: object) -> tuple[float, float]:
    return (math.nan, math.nan) if not values else (_nan(values[0]), _nan(values[1]))


def _macro(frame: pd.DataFrame, metrics: dict, own: list[str], common: list[str], options: dict):
    """(macro AUC, CI low, CI high) over the common findings, from the same patient resamples."""
    if not common:
        return math.nan, math.nan, math.nan
    if [f for f in own if f in FINDINGS] == common and "macro_auc_ci95" in metrics:
        return (metrics["macro_auc"], *metrics["macro_auc_ci95"])
    labels = frame[[label_column(f) for f in common]].to_numpy(dtype=np.float64)
    probs = frame[[prob_column(f) for f in common]].to_numpy(dtype=np.float64)
    ci = bootstrap_auc(labels, probs, frame["patient"].to_numpy(), **options)
    return float(ci["macro_auc"]), float(ci["macro_lower"]), float(ci["macro_upper"])


def _entry_row(
    entry: Entry, frame: pd.DataFrame, common: list[str], options: dict, per_finding: bool
) -> dict:
    own = scored_outputs(frame)
    metrics = metrics_from_predictions(
        _only(frame, own), [None] * len(OUTPUTS), split="leaderboard", **options
    )
    macro, low, high = _macro(frame, metrics, own, common, options)
    binary = metrics["outputs"].get(ABNORMAL, {})
    calibration = metrics.get("calibration", {}).get("outputs", {}).get(ABNORMAL, {})
    row = {
        "entry": entry.name,
        "source": str(entry.source),
        "kind": entry.kind,
        "images_given": entry.n_given,
        "n_images": len(frame),
        "n_patients": int(frame["patient"].nunique()),
        "findings_scored": sum(f in own for f in FINDINGS),
        "macro_auc": macro,
        "macro_ci_low": low,
        "macro_ci_high": high,
        "binary_auc": _nan(binary.get("auc")),
        "binary_ci_low": _pair(binary.get("auc_ci95"))[0],
        "binary_ci_high": _pair(binary.get("auc_ci95"))[1],
        "abnormal_derived": entry.abnormal_derived,
        "brier_abnormal": _nan(calibration.get("brier")),
        "brier_ci_low": _pair(calibration.get("brier_ci95"))[0],
        "brier_ci_high": _pair(calibration.get("brier_ci95"))[1],
        "ece_abnormal": _nan(calibration.get("ece")),
        "ece_ci_low": _pair(calibration.get("ece_ci95"))[0],
        "ece_ci_high": _pair(calibration.get("ece_ci95"))[1],
    }
    if per_finding:
        for finding in FINDINGS:
            found = metrics["outputs"].get(finding, {})
            row[f"auc_{finding}"] = _nan(found.get("auc"))
            row[f"auc_{finding}_ci_low"], row[f"auc_{finding}_ci_high"] = _pair(
                found.get("auc_ci95")
            )
    return row


def _google_columns(frame: pd.DataFrame, google: Path, options: dict) -> tuple[dict, dict]:
    """(CSV columns, {"n_overlap", "not_scored"}) of one entry against Google's expert labels."""
    rows, files = expert_labels(
        frame, google, [], n_resamples=options["n_resamples"], seed=options["seed"]
    )
    found = rows.set_index("label") if len(rows) else None
    columns: dict = {}
    for category in GOOGLE_MAPPING:
        key = "google_" + re.sub(r"\W+", "_", category.lower())
        if found is not None and category in found.index:
            hit = found.loc[category]
            columns |= {
                f"{key}_auc": float(hit["auc"]),
                f"{key}_ci_low": float(hit["ci_low"]),
                f"{key}_ci_high": float(hit["ci_high"]),
                f"{key}_n_images": int(hit["n_images"]),
            }
        else:
            columns |= {f"{key}_{s}": math.nan for s in ("auc", "ci_low", "ci_high", "n_images")}
    return columns, {"n_overlap": files[0]["n_overlap"], "not_scored": files[0]["not_scored"]}


def _delong_columns(entry: Entry, frame: pd.DataFrame, reference: pd.DataFrame, per_finding: bool):
    """(CSV columns, long rows) of DeLong's tests of `entry` against the reference entry."""
    table = compare_predictions(frame, reference)
    binary = table[table["output"] == ABNORMAL]
    findings = table[table["output"].isin(FINDINGS)]
    below = findings[findings["p_holm"] <= ALPHA]
    columns = {
        "binary_auc_diff": float(binary["diff"].iloc[0]) if len(binary) else math.nan,
        "binary_diff_ci_low": float(binary["ci_low"].iloc[0]) if len(binary) else math.nan,
        "binary_diff_ci_high": float(binary["ci_high"].iloc[0]) if len(binary) else math.nan,
        "binary_p_delong": float(binary["p_value"].iloc[0]) if len(binary) else math.nan,
        "findings_tested": len(findings),
        "findings_better_holm": int((below["diff"] > 0).sum()),
        "findings_worse_holm": int((below["diff"] < 0).sum()),
    }
    if per_finding:
        by_output = findings.set_index("output")
        for finding in FINDINGS:
            columns[f"p_holm_{finding}"] = (
                float(by_output.loc[finding, "p_holm"]) if finding in by_output.index else math.nan
            )
    long = table.rename(columns={"auc1": "auc_entry", "auc2": "auc_reference"})
    long.insert(0, "entry", entry.name)
    return columns, long


def _rank(table: pd.DataFrame, rank_by: str) -> pd.DataFrame:
    other = "binary_auc" if rank_by == "macro_auc" else "macro_auc"
    order = table.sort_values([rank_by, other], ascending=False, na_position="last", kind="stable")
    order.insert(0, "rank", np.arange(1, len(order) + 1))
    return order.reset_index(drop=True)


def build_leaderboard(
    sources: list[str | Path],
    *,
    names: list[str] | None = None,
    metadata: str | Path | None = None,
    split: str = "test",
    split_lists: list[str | Path] | None = None,
    google: str | Path | None = None,
    n_resamples: int = 2000,
    per_finding: bool = False,
    skip_unknown: bool = False,
    seed: int = 0,
) -> Leaderboard:
    """Score every entry on the images they all share (see the module docstring).
    `split_lists=None` uses the lists found beside the metadata (none without metadata)."""
    if len(sources) < 2:
        raise ValueError(
            f"a leaderboard needs at least two entries (got {len(sources)}); `chexvision score` "
            "or `evaluate` scores one"
        )
    if split not in RUN_SPLITS:
        raise ValueError(f"split must be one of {', '.join(RUN_SPLITS)}; got {split!r}")
    names = default_names(sources) if names is None else list(names)
    if len(names) != len(sources):
        raise ValueError(f"--names gives {len(names)} name(s) for {len(sources)} entries")
    if len(set(names)) != len(names) or not all(n.strip() for n in names):
        raise ValueError(f"--names must be distinct and non-empty; got {names}")
    meta = None
    if metadata is not None:
        meta = (read_data_entry(metadata), Path(metadata))
    entries = [
        read_entry(s, n, split=split, metadata=meta, skip_unknown=skip_unknown)
        for s, n in zip(sources, names, strict=True)
    ]
    shared = shared_images(entries)
    frames = restrict(entries, shared)
    check_agreement(entries, frames)
    lists = list(split_lists) if split_lists is not None else []
    if split_lists is None and metadata is not None:
        lists = find_split_lists(metadata)
    check = split_check(pd.Series(shared), lists)

    common = [f for f in FINDINGS if all(f in scored_outputs(fr) for fr in frames)]
    options = {"n_resamples": n_resamples, "seed": seed}
    rows, delong = [], []
    google_info = (
        None if google is None else {"file": str(google), "n_overlap": 0, "not_scored": {}}
    )
    for k, (entry, frame) in enumerate(zip(entries, frames, strict=True)):
        row = _entry_row(entry, frame, common, options, per_finding)
        if google_info is not None:
            columns, found = _google_columns(frame, Path(google), options)
            row |= columns
            google_info["n_overlap"] = found["n_overlap"]
            if found["not_scored"]:
                google_info["not_scored"][entry.name] = found["not_scored"]
        if k:
            columns, long = _delong_columns(entry, frame, frames[0], per_finding)
            row |= columns
            delong.append(long)
        row["split_verdict"] = check["verdict"]
        rows.append(row)
    rank_by = "macro_auc" if common else "binary_auc"
    table = _rank(pd.DataFrame(rows), rank_by)
    notes = [
        f"{e.name}: {e.skipped:,} image(s) not in the metadata skipped (--skip-unknown)"
        for e in entries
        if e.skipped
    ]
    return Leaderboard(
        table=table,
        delong=pd.concat(delong, ignore_index=True),
        entries=entries,
        reference=entries[0].name,
        n_images=len(shared),
        n_patients=int(frames[0]["patient"].nunique()),
        common_findings=common,
        rank_by=rank_by,
        split_check=check,
        n_resamples=n_resamples,
        seed=seed,
        google=google_info,
        per_finding=per_finding,
        notes=notes,
    )


# ----------------------------------------------------------------------------------------------
# Markdown and CSV
# ----------------------------------------------------------------------------------------------


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub Markdown table; `|` in a cell is escaped."""

    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(map(cell, header)) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def _ci(value: float, low: float, high: float, digits: int = 4) -> str:
    if value is None or math.isnan(value):
        return "—"
    if math.isnan(low) or math.isnan(high):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _p(value: float) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.3g}"


def _main_rows(board: Leaderboard) -> tuple[list[str], list[list[str]]]:
    header = [
        "rank",
        "entry",
        "images given",
        "n_images",
        "n_patients",
        f"macro AUC [95% CI] ({len(board.common_findings)} findings)",
        "binary AUC [95% CI]",
        "Brier (Abnormal)",
        "ECE (Abnormal)",
    ]
    google = board.google is not None and board.google["n_overlap"] > 0
    if google:
        header += [f"Google: {c} AUC [95% CI]" for c in GOOGLE_MAPPING]
    header += [
        f"Δ binary AUC vs {board.reference} [95% CI]",
        "p binary (DeLong)",
        "findings better / worse (Holm p ≤ 0.05)",
    ]
    rows = []
    for _, r in board.table.iterrows():
        mark = " †" if r["abnormal_derived"] else ""
        reference = r["entry"] == board.reference
        row = [
            str(r["rank"]),
            r["entry"] + (" (reference)" if reference else ""),
            f"{r['images_given']:,}",
            f"{r['n_images']:,}",
            f"{r['n_patients']:,}",
            _ci(r["macro_auc"], r["macro_ci_low"], r["macro_ci_high"]),
            _ci(r["binary_auc"], r["binary_ci_low"], r["binary_ci_high"]) + mark,
            _ci(r["brier_abnormal"], r["brier_ci_low"], r["brier_ci_high"], 3) + mark,
            _ci(r["ece_abnormal"], r["ece_ci_low"], r["ece_ci_high"], 3) + mark,
        ]
        if google:
            for category in GOOGLE_MAPPING:
                key = "google_" + re.sub(r"\W+", "_", category.lower())
                row.append(_ci(r[f"{key}_auc"], r[f"{key}_ci_low"], r[f"{key}_ci_high"]))
        if reference:
            row += ["reference", "—", "—"]
        else:
            diff = _ci(r["binary_auc_diff"], r["binary_diff_ci_low"], r["binary_diff_ci_high"])
            row += [
                diff if diff == "—" else ("+" + diff if r["binary_auc_diff"] >= 0 else diff),
                _p(r["binary_p_delong"]),
                f"{int(r['findings_better_holm'])} / {int(r['findings_worse_holm'])} of "
                f"{int(r['findings_tested'])}",
            ]
        rows.append(row)
    return header, rows


def _finding_rows(board: Leaderboard) -> tuple[list[str], list[list[str]]]:
    header = ["entry", *FINDINGS]
    rows = []
    for _, r in board.table.iterrows():
        row = [r["entry"]]
        for finding in FINDINGS:
            text = f"{r[f'auc_{finding}']:.4f}" if not math.isnan(r[f"auc_{finding}"]) else "—"
            p = r.get(f"p_holm_{finding}", math.nan)
            if r["entry"] != board.reference and text != "—" and not math.isnan(p):
                text += f" (p {_p(p)})"
            row.append(text)
        rows.append(row)
    return header, rows


def header_lines(board: Leaderboard) -> list[str]:
    given = ", ".join(f"{e.name} {e.n_given:,}" for e in board.entries)
    common = board.common_findings
    lines = [
        f"Scored on the {board.n_images:,} images ({board.n_patients:,} patients) that "
        f"{'both' if len(board.entries) == 2 else f'all {len(board.entries)}'} entries share "
        f"(images given: {given}).",
    ]
    if board.warning:  # loud, first
        lines.insert(0, f"**Split check: {board.warning}**")
    else:
        lines.append(f"Split check: {board.split_check['message']}.")
    if not common:
        ranked = "Ranked by binary AUC: no finding is scored by every entry, so no macro AUC"
    elif len(common) == len(FINDINGS):
        ranked = f"Ranked by macro AUC (the mean AUC over the {len(FINDINGS)} findings)"
    else:
        ranked = (
            f"Ranked by macro AUC (the mean AUC over the {len(common)} findings every entry "
            f"scores: {', '.join(common)})"
        )
    table = "; the per-finding table shows those p-values" if board.per_finding else ""
    lines += [
        f"{ranked}; binary AUC: the Abnormal output (any finding).",
        f"95% CIs: patient bootstrap, {board.n_resamples:,} resamples (seed {board.seed}), the "
        "same resamples for every entry.",
        f"DeLong (1988), two-sided, each entry against the first, {board.reference}: "
        "'Δ binary AUC' and 'p binary' test the Abnormal AUC difference (entry − reference; a "
        "single test, not adjusted); 'findings better / worse' counts the findings whose AUC "
        "difference has a Holm-adjusted p ≤ 0.05, Holm across the findings of that entry's "
        f"comparison{table}. No test is made on the macro AUC.",
        "Brier and ECE: calibration of the Abnormal probability as given (after any temperature "
        "scaling the model applied).",
    ]
    if any(e.abnormal_derived for e in board.entries):
        lines.append(
            f"† abnormal score derived ({ABNORMAL_RULE}): the file has no abnormal column, so it "
            "is not a calibrated probability of abnormality."
        )
    if board.google is not None:
        google = board.google
        if google["n_overlap"]:
            lines.append(
                f"Expert labels: {Path(google['file']).name} (Majkowska et al. 2019) on "
                f"{google['n_overlap']:,} of the shared images; each category scored by the max "
                "of the findings it covers; Fracture has no NIH counterpart and is not scored."
            )
            for name, missing in google["not_scored"].items():
                for category, why in missing.items():
                    lines.append(f"{name}: Google {category} not scored ({why}).")
        else:
            lines.append(
                f"Expert labels: no shared image is in {Path(google['file']).name}; not scored."
            )
    return lines + board.notes


def to_markdown(board: Leaderboard) -> str:
    parts = ["# Leaderboard", "", *(f"{line}  " for line in header_lines(board)), ""]
    parts.append(markdown_table(*_main_rows(board)))
    if board.per_finding:
        parts += [
            "",
            f"## AUC per finding (Holm-adjusted DeLong p vs {board.reference})",
            "",
            markdown_table(*_finding_rows(board)),
        ]
    parts += ["", DISCLAIMER, ""]
    return "\n".join(parts)


def write_leaderboard(board: Leaderboard, out: str | Path) -> list[Path]:
    """OUT/leaderboard.csv (one row per entry), leaderboard.md and leaderboard_delong.csv (every
    DeLong test against the reference, with raw and Holm-adjusted p-values)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in OUTPUT_FILES]
    board.table.to_csv(paths[0], index=False)
    paths[1].write_text(to_markdown(board), encoding="utf-8")
    board.delong.to_csv(paths[2], index=False)
    return paths
