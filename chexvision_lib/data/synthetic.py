"""A deterministic synthetic NIH ChestX-ray14, written in the exact layout of the real release.

`write_synthetic_nih(out)` draws a few hundred patients, each with one to five follow-up films, and
writes them the way Kaggle's copy of ChestX-ray14 is laid out, so every later step of the pipeline
(index, cache, train, evaluate, explain) can run end to end without the 45 GB download:

    out/images_001/images/00000001_000.png ...   8-bit grey PNG, image_size x image_size
    out/Data_Entry_2017.csv                      Kaggle 2017 header, trailing empty column
    out/train_val_list.txt, out/test_list.txt    patient-wise split, no final newline
    out/BBox_List_2017.csv                       one box per drawn finding ("Infiltrate" spelling)
    out/synthetic_nih.json                       the arguments and summary (marks the folder ours)

The films are drawn, not sampled from real data: a torso, dark lungs with vessel markings, ribs,
clavicles, a heart on the image-right side of the midline (a PA film), diaphragm domes and film
noise. Each of the 14 findings is a localised pattern with its own shape, texture and zone (an
effusion is basal fluid with a meniscus, a nodule a small bright disc, fibrosis a reticular net in
the upper zones, ...), so a small CNN learns the set in minutes and Grad-CAM maps can be scored
against the recorded boxes. A patient's anatomy and the place of each of their findings are drawn
from the patient's seed, so follow-ups of one patient look alike and a finding that persists stays
where it was.

Everything derives from `seed` through numpy's SeedSequence: the same arguments give byte-identical
files (on the same platform and numpy version).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from chexvision_lib.core.labels import FINDINGS, NO_FINDING

# The Kaggle 2017 copy: the bracketed names split into four columns when parsed, and the line ends
# with a comma, which pandas reads as an extra "Unnamed: 11" column.
DATA_ENTRY_NAME = "Data_Entry_2017.csv"
DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
BBOX_NAME = "BBox_List_2017.csv"
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
TRAIN_VAL_LIST_NAME = "train_val_list.txt"
TEST_LIST_NAME = "test_list.txt"
MARKER_NAME = "synthetic_nih.json"
# The real box file spells one finding differently from the Data_Entry file.
BBOX_SPELLING: dict[str, str] = {"Infiltration": "Infiltrate"}

# Label counts over the 112,120 real images: the synthetic prevalence leans towards these.
NIH_FINDING_COUNTS: dict[str, int] = {
    "Atelectasis": 11559,
    "Cardiomegaly": 2776,
    "Effusion": 13317,
    "Infiltration": 19894,
    "Mass": 5782,
    "Nodule": 6331,
    "Pneumonia": 1431,
    "Pneumothorax": 5302,
    "Consolidation": 4667,
    "Edema": 2303,
    "Emphysema": 2516,
    "Fibrosis": 1686,
    "Pleural_Thickening": 3385,
    "Hernia": 227,
}

_NORMAL_FRACTION = 0.5  # share of films labelled "No Finding"
_FINDINGS_PER_ABNORMAL = (1, 2, 3)
_FINDINGS_PER_ABNORMAL_P = (0.35, 0.35, 0.30)
# An abnormal film's lead finding is dealt with a floor weight per finding (so a few hundred films
# still give every finding positives in both splits: the floor is about the rarest finding's share
# of films) plus the real prevalence; its companions follow the real prevalence more closely, so
# Infiltration stays the most common finding and Hernia the rarest.
_LEAD_FLOOR = 0.064
_COMPANION_FLOOR = 0.03
# Findings that go together in the real data: drawing one multiplies the other's chance.
_CO_OCCURRENCE: tuple[tuple[str, str, float], ...] = (
    ("Effusion", "Atelectasis", 5.0),
    ("Cardiomegaly", "Edema", 6.0),
    ("Cardiomegaly", "Effusion", 3.0),
    ("Nodule", "Mass", 6.0),
    ("Pneumonia", "Infiltration", 4.0),
    ("Consolidation", "Atelectasis", 2.0),
)
_FOLLOW_UP_COUNTS = (1, 2, 3, 4, 5)
_FOLLOW_UP_P = (0.30, 0.25, 0.20, 0.15, 0.10)
_KEEP_LABELS_P = 0.45  # chance a follow-up carries the previous film's findings unchanged
_PA_FRACTION = 0.6

# Side index 0 is the image-left half (the patient's right on a PA film), 1 the image-right half.
_SIDE_SIGN = (-1.0, 1.0)
# How bright ribs are over lung and over soft tissue (they barely show through the mediastinum).
_RIB_OVER_LUNG = 0.085
_RIB_OVER_BODY = 0.015
_BACKGROUND = 0.03
_LUNG_POWER = 2.5  # superellipse exponent of the lung outline (2 would be an ellipse)
# Intensities above this saturate; the film's tone curve is a table over this many levels.
_MAX_INTENSITY = 1.2
_LUT_SIZE = 4096


@dataclass(frozen=True)
class _Anatomy:
    """One patient's chest in anatomy coordinates: x to the image right, y down, 0-1 of film."""

    midline: float
    body_half_width: float
    neck_half_width: float
    shoulder_y: float
    lung_top: float
    lung_base: tuple[float, float]  # height of each dome's apex
    lung_offset: float  # midline to each lung's centre
    lung_half_width: float
    dome_depth: float  # how far the costophrenic angle lies below the dome apex
    heart_x: float
    heart_y: float
    heart_long: float  # half-axes of the heart's ellipse, tilted so its apex points down-right
    heart_short: float
    heart_tilt: float
    rib_spacing: float
    rib_phase: float
    body_level: float
    lung_level: float
    marking_level: float
    marking_phase: float
    finding_side: tuple[int, ...]  # the side each finding takes in this patient, in FINDINGS order


@dataclass(frozen=True)
class _FilmSpec:
    """Everything needed to draw one film and write its Data_Entry row."""

    name: str
    patient_id: int
    follow_up: int
    age: int
    sex: str
    view: str
    findings: tuple[str, ...]  # in FINDINGS order


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def write_synthetic_nih(
    out: str | Path,
    *,
    n_patients: int = 240,
    image_size: int = 256,
    seed: int = 0,
    test_fraction: float = 0.25,
    images_per_folder: int = 500,
    workers: int = 1,
) -> dict:
    """Write a synthetic ChestX-ray14 under `out` in the NIH/Kaggle layout and return a summary.

    Args:
        out: target folder. It must be absent, empty, or a previous synthetic set (recognised by
            its `synthetic_nih.json`), whose files are then deleted and written anew; any other
            non-empty folder raises FileExistsError so real data is never overwritten.
        n_patients: number of patients (>= 8); each has 1-5 follow-up films (about 2.5 on average).
        image_size: side of the square PNGs in pixels, 64 to 4096 (1024 mimics the real files).
            Labels, patients and split do not depend on it.
        seed: every random choice derives from it; equal arguments give byte-identical files.
        test_fraction: share of patients (not films) in `test_list.txt`, strictly between 0 and 1.
        images_per_folder: films per `images_NNN/images` folder (Kaggle's copy holds 10,000).
        workers: processes that draw films in parallel (1 draws in this process; use 1 inside a
            DataLoader worker or other daemon process). The files are the same for any value.

    Returns:
        {"out", "n_images", "n_patients", "n_train_val_images", "n_test_images",
         "n_test_patients", "image_size", "seed", "label_counts"}, where label_counts maps
        "No Finding" and each finding to its number of films.
    """
    out = Path(out)
    _validate_arguments(n_patients, image_size, seed, test_fraction, images_per_folder, workers)
    _prepare_folder(out)

    test_patients = _test_patients(n_patients, seed, test_fraction)
    films = _film_specs(n_patients, seed, test_patients)
    anatomies = {pid: _patient_anatomy(seed, pid) for pid in range(1, n_patients + 1)}

    jobs = []
    for index, film in enumerate(films):
        folder = out / f"images_{index // images_per_folder + 1:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((film, anatomies[film.patient_id], image_size, seed, folder / film.name))
    if workers == 1:
        film_boxes = [_write_film(job) for job in jobs]
    else:
        # Every film has its own seed, so the files do not depend on the number of workers.
        with ProcessPoolExecutor(max_workers=workers) as pool:
            film_boxes = list(
                pool.map(_write_film, jobs, chunksize=max(len(jobs) // (8 * workers), 1))
            )
    boxes = [
        (film.name, finding, box)
        for film, found in zip(films, film_boxes, strict=True)
        for finding, box in found.items()
    ]

    _write_data_entry(out / DATA_ENTRY_NAME, films, image_size)
    train_val = [f.name for f in films if f.patient_id not in test_patients]
    test = [f.name for f in films if f.patient_id in test_patients]
    # The real lists end without a final newline; readers must cope, so ours do the same.
    (out / TRAIN_VAL_LIST_NAME).write_text("\n".join(train_val), encoding="utf-8")
    (out / TEST_LIST_NAME).write_text("\n".join(test), encoding="utf-8")
    _write_bbox_list(out / BBOX_NAME, boxes)

    label_counts = {NO_FINDING: sum(not f.findings for f in films)}
    label_counts.update({name: sum(name in f.findings for f in films) for name in FINDINGS})
    summary = {
        "out": str(out),
        "n_images": len(films),
        "n_patients": n_patients,
        "n_train_val_images": len(train_val),
        "n_test_images": len(test),
        "n_test_patients": len(test_patients),
        "image_size": image_size,
        "seed": seed,
        "label_counts": label_counts,
    }
    arguments = {
        "n_patients": n_patients,
        "image_size": image_size,
        "seed": seed,
        "test_fraction": test_fraction,
        "images_per_folder": images_per_folder,
    }
    # Written last: its presence says the set is complete and that this folder may be overwritten.
    # It leaves out the folder's own path, so copies of a set stay byte-identical.
    recorded = {key: value for key, value in summary.items() if key != "out"}
    marker = {
        "generator": "chexvision_lib.data.synthetic",
        "arguments": arguments,
        "summary": recorded,
    }
    (out / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return summary


# --------------------------------------------------------------------------------------------
# Arguments and output folder
# --------------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _validate_arguments(
    n_patients: int,
    image_size: int,
    seed: int,
    test_fraction: float,
    images_per_folder: int,
    workers: int,
) -> None:
    if not _is_int(n_patients) or n_patients < 8:
        raise ValueError(f"n_patients must be an integer >= 8, got {n_patients!r}")
    if not _is_int(image_size) or not 64 <= image_size <= 4096:
        raise ValueError(f"image_size must be an integer from 64 to 4096, got {image_size!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, (int, float))
        or not 0.0 < test_fraction < 1.0
    ):
        raise ValueError(
            f"test_fraction must be a number strictly between 0 and 1, got {test_fraction!r}"
        )
    if not _is_int(images_per_folder) or images_per_folder < 1:
        raise ValueError(f"images_per_folder must be an integer >= 1, got {images_per_folder!r}")
    if not _is_int(workers) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")


def _prepare_folder(out: Path) -> None:
    """Make `out` ready: create it, or clear a previous synthetic set; refuse anything else."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if not out.exists():
        out.mkdir(parents=True)
        return
    if not any(out.iterdir()):
        return
    if not (out / MARKER_NAME).is_file():
        raise FileExistsError(
            f"{out} is not empty and holds no {MARKER_NAME}, so it is not a synthetic set written "
            "here before; pass an empty or new folder"
        )
    # Delete only what a previous run wrote, so stray files of the user survive.
    for path in out.iterdir():
        if path.is_dir() and re.fullmatch(r"images_\d{3}", path.name):
            shutil.rmtree(path)
    for name in (DATA_ENTRY_NAME, BBOX_NAME, TRAIN_VAL_LIST_NAME, TEST_LIST_NAME, MARKER_NAME):
        (out / name).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Patients, follow-ups, labels and split
# --------------------------------------------------------------------------------------------


# One random stream per purpose. A stream is always keyed by the same number of integers: numpy's
# SeedSequence pads short keys with zeros, so [1, 2] and [1, 2, 0] would give the same draws.
_STREAM_KEYS = {
    "patient": 2,  # seed, patient: follow-up count, age, sex, views, label draw sizes
    "anatomy": 2,  # seed, patient: body, lungs, heart, ribs
    "anatomy_change": 3,  # seed, patient, finding: how a finding alters the anatomy
    "geometry": 3,  # seed, patient, finding: where and how big (same in every follow-up)
    "film": 3,  # seed, patient, follow-up: positioning, exposure, noise
    "texture": 4,  # seed, patient, follow-up, finding: a finding's texture on one film
    "split": 1,  # seed
    "labels": 2,  # seed, test side (0/1): dealing lead findings
}


def _rng(stream: str, *keys: int) -> np.random.Generator:
    """A generator for one purpose, so no draw depends on the order of any other."""
    if len(keys) != _STREAM_KEYS[stream]:
        raise AssertionError(f"stream {stream!r} takes {_STREAM_KEYS[stream]} keys, got {keys}")
    return np.random.default_rng([list(_STREAM_KEYS).index(stream), *keys])


def _finding_weights(floor: float) -> np.ndarray:
    """Probability of each finding: `floor` each, the rest in proportion to the real counts."""
    counts = np.array([NIH_FINDING_COUNTS[name] for name in FINDINGS], dtype=np.float64)
    return floor + (1.0 - floor * len(FINDINGS)) * counts / counts.sum()


def _co_occurrence_boost() -> np.ndarray:
    boost = np.ones((len(FINDINGS), len(FINDINGS)))
    for a, b, factor in _CO_OCCURRENCE:
        i, j = FINDINGS.index(a), FINDINGS.index(b)
        boost[i, j] = boost[j, i] = factor
    return boost


def _finding_count(rng: np.random.Generator) -> int:
    """Number of findings in one label draw: 0 ("No Finding") about half the time, else 1-3."""
    if rng.random() < _NORMAL_FRACTION:
        return 0
    return int(rng.choice(_FINDINGS_PER_ABNORMAL, p=_FINDINGS_PER_ABNORMAL_P))


def _deal_leads(films_per_draw: list[int], rng: np.random.Generator) -> list[int]:
    """Lead finding (index) of each abnormal draw, given how many films each draw labels.

    Each lead is drawn in proportion to how far its finding still falls short of its target share
    of these films, so the counts track the weights closely (rare findings keep their floor even
    in a few hundred films) while the order stays random.
    """
    target = _finding_weights(_LEAD_FLOOR) * sum(films_per_draw)
    dealt = np.zeros(len(FINDINGS))
    leads = []
    for n_films in films_per_draw:
        shortfall = np.maximum(target - dealt, 0.0) + 1e-9
        lead = int(rng.choice(len(FINDINGS), p=shortfall / shortfall.sum()))
        dealt[lead] += n_films
        leads.append(lead)
    return leads


def _with_companions(lead: int, n_findings: int, rng: np.random.Generator) -> tuple[str, ...]:
    """The lead finding plus companions drawn by weight, favouring findings that go with those
    already chosen (effusion with atelectasis, cardiomegaly with oedema, ...)."""
    weights = _finding_weights(_COMPANION_FLOOR)
    boost = _co_occurrence_boost()
    chosen = [lead]
    while len(chosen) < n_findings:
        p = weights.copy()
        for i in chosen:
            p *= boost[i]
        p[chosen] = 0.0
        chosen.append(int(rng.choice(len(FINDINGS), p=p / p.sum())))
    return tuple(FINDINGS[i] for i in sorted(chosen))


def _film_specs(n_patients: int, seed: int, test_patients: set[int]) -> list[_FilmSpec]:
    """All films, sorted by image name as in the real Data_Entry file.

    Leads are dealt separately to the test patients and to the others, so every finding has
    positives on both sides of the split.
    """
    # Pass 1, per patient: visits, and for each visit either a fresh label draw (with its number
    # of findings) or a repeat of the previous visit's labels, as chronic findings persist.
    visits: list[tuple[int, int, int, str, str, int]] = []  # pid, follow-up, age, sex, view, draw
    draw_sizes: list[int] = []
    draw_patient: list[int] = []
    for pid in range(1, n_patients + 1):
        rng = _rng("patient", seed, pid)
        n_follow_ups = int(rng.choice(_FOLLOW_UP_COUNTS, p=_FOLLOW_UP_P))
        age = float(np.clip(rng.normal(50.0, 18.0), 1, 92))
        sex = "M" if rng.random() < 0.56 else "F"
        for follow_up in range(n_follow_ups):
            if follow_up == 0 or rng.random() >= _KEEP_LABELS_P:
                draw_sizes.append(_finding_count(rng))
                draw_patient.append(pid)
            view = "PA" if rng.random() < _PA_FRACTION else "AP"
            draw = len(draw_sizes) - 1  # this visit's draw, fresh or repeated
            visits.append((pid, follow_up, int(np.clip(round(age), 1, 95)), sex, view, draw))
            age += rng.uniform(0.0, 1.5)

    # Pass 2: a lead finding for each abnormal draw, then its companions.
    films_per_draw = np.bincount([visit[-1] for visit in visits], minlength=len(draw_sizes))
    labels: list[tuple[str, ...]] = [()] * len(draw_sizes)
    for in_test in (False, True):
        rng = _rng("labels", seed, int(in_test))
        draws = [
            i
            for i, size in enumerate(draw_sizes)
            if size > 0 and (draw_patient[i] in test_patients) == in_test
        ]
        leads = _deal_leads([int(films_per_draw[i]) for i in draws], rng)
        for draw, lead in zip(draws, leads, strict=True):
            labels[draw] = _with_companions(lead, draw_sizes[draw], rng)

    return [
        _FilmSpec(
            name=f"{pid:08d}_{follow_up:03d}.png",
            patient_id=pid,
            follow_up=follow_up,
            age=age,
            sex=sex,
            view=view,
            findings=labels[draw],
        )
        for pid, follow_up, age, sex, view, draw in visits
    ]


def _test_patients(n_patients: int, seed: int, test_fraction: float) -> set[int]:
    """Patients of the test list: a seeded share, at least one patient on each side."""
    n_test = min(max(round(test_fraction * n_patients), 1), n_patients - 1)
    order = _rng("split", seed).permutation(np.arange(1, n_patients + 1))
    return {int(pid) for pid in order[:n_test]}


# --------------------------------------------------------------------------------------------
# Metadata files
# --------------------------------------------------------------------------------------------


def _write_data_entry(path: Path, films: list[_FilmSpec], image_size: int) -> None:
    # Real films are about 2500-3000 px at 0.143 mm; their 1024-px copies keep the field of view.
    spacing = f"{0.143 * 1024 / image_size:.6g}"
    lines = [DATA_ENTRY_HEADER]
    for f in films:
        labels = "|".join(f.findings) if f.findings else NO_FINDING
        lines.append(
            f"{f.name},{labels},{f.follow_up},{f.patient_id},{f.age},{f.sex},{f.view},"
            f"{image_size},{image_size},{spacing},{spacing},"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_bbox_list(
    path: Path, boxes: list[tuple[str, str, tuple[float, float, float, float]]]
) -> None:
    # The real file is grouped by finding; keep that order, then image name.
    order = {name: i for i, name in enumerate(FINDINGS)}
    lines = [BBOX_HEADER]
    for name, finding, (x, y, w, h) in sorted(boxes, key=lambda b: (order[b[1]], b[0])):
        label = BBOX_SPELLING.get(finding, finding)
        lines.append(f"{name},{label},{x:.3f},{y:.3f},{w:.3f},{h:.3f}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Anatomy
# --------------------------------------------------------------------------------------------


def _patient_anatomy(seed: int, pid: int) -> _Anatomy:
    """Draw one patient's body; follow-ups reuse it and only add jitter and findings."""
    rng = _rng("anatomy", seed, pid)
    midline = 0.5 + rng.normal(0.0, 0.008)
    lung_top = rng.uniform(0.14, 0.19)
    base = rng.uniform(0.70, 0.77)
    # The left dome (image right) usually sits a little lower than the right one, under the heart.
    lung_base = (base, base + rng.uniform(0.0, 0.03))
    anatomy = _Anatomy(
        midline=midline,
        body_half_width=rng.uniform(0.38, 0.45),
        neck_half_width=rng.uniform(0.07, 0.09),
        shoulder_y=rng.uniform(0.10, 0.15),
        lung_top=lung_top,
        lung_base=lung_base,
        lung_offset=rng.uniform(0.165, 0.19),
        lung_half_width=rng.uniform(0.125, 0.145),
        dome_depth=rng.uniform(0.045, 0.07),
        heart_x=midline + rng.uniform(0.03, 0.045),
        heart_y=0.0,  # set below: the heart rests on the left dome
        heart_long=rng.uniform(0.13, 0.145),
        heart_short=rng.uniform(0.085, 0.1),
        heart_tilt=rng.uniform(0.3, 0.5),
        rib_spacing=rng.uniform(0.05, 0.062),
        rib_phase=rng.uniform(0.0, 1.0),
        body_level=rng.uniform(0.50, 0.58),
        lung_level=rng.uniform(0.15, 0.20),
        marking_level=rng.uniform(0.06, 0.09),
        marking_phase=rng.uniform(0.0, 2 * math.pi),
        finding_side=tuple(int(s) for s in rng.integers(0, 2, size=len(FINDINGS))),
    )
    return _rest_heart_on_dome(anatomy, depth=rng.uniform(0.0, 0.02))


def _heart_extent(an: _Anatomy) -> tuple[float, float]:
    """Half width and half height of the box around the tilted heart ellipse."""
    c, s = math.cos(an.heart_tilt), math.sin(an.heart_tilt)
    return (
        math.hypot(an.heart_long * c, an.heart_short * s),
        math.hypot(an.heart_long * s, an.heart_short * c),
    )


def _rest_heart_on_dome(an: _Anatomy, depth: float) -> _Anatomy:
    """Place the heart so its lower border sinks `depth` below the left dome into the abdomen."""
    return dataclasses.replace(an, heart_y=an.lung_base[1] + depth - _heart_extent(an)[1])


def _film_anatomy(an: _Anatomy, film: _FilmSpec, seed: int) -> _Anatomy:
    """The patient's anatomy as this film shows it: some findings change the anatomy itself."""
    changes: dict[str, object] = {}
    if film.view == "AP":
        # An AP film magnifies the heart a little and is usually taken in a shallower breath.
        changes["heart_long"] = an.heart_long * 1.05
        changes["lung_base"] = tuple(b - 0.01 for b in an.lung_base)
    an = dataclasses.replace(an, **changes)
    for finding in film.findings:
        rng = _rng("anatomy_change", seed, film.patient_id, FINDINGS.index(finding))
        if finding == "Cardiomegaly":
            # The enlarged heart grows mostly towards the patient's left (image right).
            old_width, old_height = _heart_extent(an)
            bottom = an.heart_y + old_height
            an = dataclasses.replace(
                an,
                heart_long=an.heart_long * rng.uniform(1.4, 1.55),
                heart_short=an.heart_short * rng.uniform(1.15, 1.25),
            )
            width, height = _heart_extent(an)
            # Still resting on the diaphragm.
            an = dataclasses.replace(
                an, heart_x=an.heart_x + 0.6 * (width - old_width), heart_y=bottom - height
            )
        elif finding == "Emphysema":
            # Over-inflated: darker lungs with fewer markings, low flat domes, a narrow heart.
            drop = rng.uniform(0.035, 0.05)
            an = dataclasses.replace(
                an,
                lung_level=an.lung_level * 0.45,
                marking_level=an.marking_level * 0.3,
                lung_base=tuple(b + drop for b in an.lung_base),
                heart_y=an.heart_y + drop,
                dome_depth=an.dome_depth * 0.3,
                lung_half_width=an.lung_half_width * 1.05,
                heart_long=an.heart_long * 0.85,
                rib_spacing=an.rib_spacing * 1.12,
            )
    return an


def _lung_ellipse(an: _Anatomy, side: int) -> tuple[float, float, float, float]:
    """Centre and half-axes of the ellipse a lung is cut from (the dome trims its bottom)."""
    cx = an.midline + _SIDE_SIGN[side] * an.lung_offset
    # The ellipse reaches well below the dome, so the lung is still broad where the dome cuts it.
    bottom = an.lung_base[side] + an.dome_depth + 0.15
    return cx, (an.lung_top + bottom) / 2, an.lung_half_width, (bottom - an.lung_top) / 2


def _lung_radius(
    x: np.ndarray, y: np.ndarray, ellipse: tuple[float, float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Elliptic radius (1 on the border) of a lung that widens towards its base, and its width."""
    cx, cy, a, b = ellipse
    half_width = a * (0.9 + 0.2 * np.clip((y - cy) / b, -1.0, 1.0))
    # A superellipse (exponent 2.5): a rounder apex and fuller flanks than an ellipse.
    power = np.abs((x - cx) / half_width) ** _LUNG_POWER + np.abs((y - cy) / b) ** _LUNG_POWER
    return power ** (1.0 / _LUNG_POWER), half_width


def _dome(an: _Anatomy, side: int, x: np.ndarray, base: float | None = None) -> np.ndarray:
    """Height of a hemidiaphragm: flat from the midline to just medial of the lung's centre, then
    curving down to the costophrenic angle at the lateral chest wall."""
    cx, _, a, _ = _lung_ellipse(an, side)
    lateral = np.maximum(_SIDE_SIGN[side] * (x - cx) / a + 0.3, 0.0)
    return (an.lung_base[side] if base is None else base) + an.dome_depth * lateral**2 / 1.69


def _lung_point(an: _Anatomy, side: int, across: float, down: float) -> tuple[float, float]:
    """A point in a lung: `down` 0 apex .. 1 dome, `across` -1 medial .. +1 lateral border."""
    cx, cy, a, b = _lung_ellipse(an, side)
    y = an.lung_top + down * (an.lung_base[side] - an.lung_top)
    t = min(max((y - cy) / b, -1.0), 1.0)
    half = a * (0.9 + 0.2 * t) * max(1.0 - abs(t) ** _LUNG_POWER, 0.05) ** (1.0 / _LUNG_POWER)
    return cx + _SIDE_SIGN[side] * across * half, y


def _inside(distance: np.ndarray, edge: float) -> np.ndarray:
    """1 well inside a shape (signed distance < 0), 0 outside, a linear ramp `edge` wide."""
    ramp = 0.5 - distance / edge
    return np.minimum(np.maximum(ramp, 0.0, out=ramp), 1.0, out=ramp)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Band-limited noise (about unit variance): a random lattice `cell` pixels apart, smoothly
    interpolated. Cheap stand-in for blurred white noise, with no per-pixel Python work."""
    h, w = shape
    cell = max(cell, 1.0)
    coarse = rng.standard_normal((int(h / cell) + 2, int(w / cell) + 2)).astype(np.float32)
    ry, rx = np.arange(h) / cell, np.arange(w) / cell
    iy, ix = ry.astype(np.int64), rx.astype(np.int64)
    fy = (ry - iy).astype(np.float32)
    fx = (rx - ix).astype(np.float32)
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)  # smoothstep hides the lattice
    # Columns first on the small lattice, then rows: the result comes out C-contiguous, which
    # keeps later full-film arithmetic on it fast.
    cols = coarse[:, ix] * (1 - fx) + coarse[:, ix + 1] * fx
    return cols[iy] * (1 - fy)[:, None] + cols[iy + 1] * fy[:, None]


# --------------------------------------------------------------------------------------------
# Canvas: the film being drawn
# --------------------------------------------------------------------------------------------


Window = tuple[slice, slice]


class _Canvas:
    """The film as float intensities (0 = black, 1 = bone white) plus maps findings reuse.

    Drawing happens in anatomy coordinates; a per-film shift and scale (patient positioning) maps
    them to pixels, so findings and anatomy move together and boxes follow.
    """

    def __init__(self, size: int, shift: tuple[float, float], scale: float) -> None:
        self.size = size
        self.shift = shift
        self.scale = scale
        self.image = np.full((size, size), _BACKGROUND, dtype=np.float32)
        self.edge = max(0.004, 1.2 / size)  # width of a "sharp" edge: at least about one pixel
        self.lungs: list[np.ndarray] = []
        self.ribs = np.zeros((size, size), dtype=np.float32)
        # Soft tissue alone (torso, spine) before the lungs are cut out, set by _draw_anatomy: what
        # fluid or a raised diaphragm shows where lung used to be.
        self.body = self.image.copy()

    def _to_film(self, x: float, y: float) -> tuple[float, float]:
        return (
            (x - 0.5) * self.scale + 0.5 + self.shift[0],
            (y - 0.5) * self.scale + 0.5 + self.shift[1],
        )

    def window(
        self, x0: float, y0: float, x1: float, y1: float
    ) -> tuple[Window, np.ndarray, np.ndarray]:
        """Pixels covering an anatomy box, with the anatomy coordinates of their centres as a row
        vector x (1, w) and a column vector y (h, 1) that broadcast to the window's shape."""
        fx0, fy0 = self._to_film(x0, y0)
        fx1, fy1 = self._to_film(x1, y1)
        c0, c1 = self._pixel_range(fx0, fx1)
        r0, r1 = self._pixel_range(fy0, fy1)
        cols = (np.arange(c0, c1, dtype=np.float32) + 0.5) / self.size
        rows = (np.arange(r0, r1, dtype=np.float32) + 0.5) / self.size
        x = (cols - 0.5 - self.shift[0]) / self.scale + 0.5
        y = (rows - 0.5 - self.shift[1]) / self.scale + 0.5
        return (slice(r0, r1), slice(c0, c1)), x[None, :], y[:, None]

    def _pixel_range(self, low: float, high: float) -> tuple[int, int]:
        start = min(max(math.floor(low * self.size), 0), self.size - 1)
        stop = min(max(math.ceil(high * self.size), start + 1), self.size)
        return start, stop

    def full(self) -> tuple[Window, np.ndarray, np.ndarray]:
        return self.window(-10.0, -10.0, 10.0, 10.0)

    def pixel_box(
        self, x0: float, y0: float, x1: float, y1: float
    ) -> tuple[float, float, float, float]:
        """An anatomy box as (x, y, w, h) in pixels, clipped to the film."""
        fx0, fy0 = self._to_film(x0, y0)
        fx1, fy1 = self._to_film(x1, y1)
        return self._clip_box(fx0 * self.size, fy0 * self.size, fx1 * self.size, fy1 * self.size)

    def mask_box(
        self, win: Window, mask: np.ndarray, threshold: float = 0.5, pad: float = 0.01
    ) -> tuple[float, float, float, float]:
        """The pixel box around where `mask` (drawn in window `win`) exceeds `threshold`, padded by
        `pad` of the film so the box shows some context, as radiologists' boxes do."""
        mask = np.broadcast_to(mask, (win[0].stop - win[0].start, win[1].stop - win[1].start))
        rows = np.flatnonzero((mask > threshold).any(axis=1))
        cols = np.flatnonzero((mask > threshold).any(axis=0))
        if rows.size == 0:  # pattern fully outside the film: box the window itself
            rows = np.array([0, mask.shape[0] - 1])
            cols = np.array([0, mask.shape[1] - 1])
        margin = pad * self.size
        return self._clip_box(
            win[1].start + cols[0] - margin,
            win[0].start + rows[0] - margin,
            win[1].start + cols[-1] + 1 + margin,
            win[0].start + rows[-1] + 1 + margin,
        )

    def _clip_box(
        self, x0: float, y0: float, x1: float, y1: float
    ) -> tuple[float, float, float, float]:
        x0, x1 = (min(max(v, 0.0), self.size - 1.0) for v in (x0, x1))
        y0, y1 = (min(max(v, 0.0), self.size - 1.0) for v in (y0, y1))
        return (x0, y0, max(x1 - x0, 1.0), max(y1 - y0, 1.0))


def _draw_anatomy(cv: _Canvas, an: _Anatomy) -> None:
    """Torso, lungs with vessel markings, heart, mediastinum, ribs, clavicles, domes.

    Only the torso is computed over the whole film; every other structure is drawn inside its own
    window, which keeps a 1024-px film cheap.
    """
    mid = an.midline
    win, x, y = cv.full()
    # Torso: neck widening into rounded shoulders, slightly narrower towards the waist; thicker
    # (brighter) in the middle than at the flanks.
    ramp = _smoothstep((y - (an.shoulder_y - 0.07)) / 0.13)
    waist = 1.0 - 0.06 * np.clip((y - 0.55) / 0.45, 0.0, 1.0)
    half_width = an.neck_half_width + (an.body_half_width * waist - an.neck_half_width) * ramp
    offset = np.abs(x - mid)
    torso = _inside(offset - half_width, 0.012)
    thickness = np.clip(1.0 - 0.5 * (offset / half_width) ** 2, 0.4, 1.0)
    image = _BACKGROUND + (an.body_level * thickness - _BACKGROUND) * torso
    # Spine and upper mediastinum: a brighter column between the lungs.
    image += 0.07 * _inside(offset - 0.03, 0.01) * torso
    image += 0.05 * _inside(offset - 0.06, 0.02) * _inside(an.shoulder_y - y, 0.02)
    cv.image[win] = image
    cv.body = cv.image.copy()

    # Lungs: dark fields, denser towards the bases, with vessels radiating from the hila.
    for side, sign in enumerate(_SIDE_SIGN):
        ellipse = _lung_ellipse(an, side)
        cx, cy, a, b = ellipse
        bottom = an.lung_base[side] + an.dome_depth * 1.5
        win, x, y = cv.window(cx - 1.2 * a, an.lung_top - 0.01, cx + 1.2 * a, bottom)
        radius, width = _lung_radius(x, y, ellipse)
        dome = _dome(an, side, x)
        lung = _inside((radius - 1.0) * width, 0.008) * _inside(y - dome, 0.006)
        hilum_x, hilum_y = mid + sign * 0.075, an.heart_y - _heart_extent(an)[1] - 0.02
        dx, dy = sign * (x - hilum_x), y - hilum_y
        r = np.sqrt(dx * dx + dy * dy)
        theta = np.arctan2(dy, dx)
        # The sine term bends the rays, so they read as branching vessels, not a sunburst.
        bend = 2.5 * np.sin(11.0 * r + 5.0 * theta + an.marking_phase)
        vessels = 0.5 + 0.5 * np.cos(34.0 * theta + 18.0 * r + an.marking_phase + bend)
        vessels *= vessels
        vessels *= vessels
        vessels *= vessels  # cos^8: thin bright streaks
        depth = np.clip((y - an.lung_top) / (an.lung_base[side] - an.lung_top), 0.0, 1.0)
        fill = an.lung_level + 0.07 * depth + an.marking_level * vessels * np.exp(-r / 0.16)
        cv.image[win] += (fill - cv.image[win]) * lung
        full_lung = np.zeros_like(cv.image)
        full_lung[win] = lung
        cv.lungs.append(full_lung)

    # Ribs: arcs rising from the spine and curving down laterally, repeating down the chest.
    chest_bottom = max(an.lung_base) + an.dome_depth * 1.5
    win, x, y = cv.window(
        mid - an.body_half_width, an.lung_top - 0.06, mid + an.body_half_width, chest_bottom + 0.03
    )
    u = np.abs(x - mid)
    phase = (y + 1.2 * u - 3.2 * u * u - an.lung_top) / an.rib_spacing + an.rib_phase
    rib = np.exp(-((((phase - np.floor(phase)) - 0.5) / 0.16) ** 2))
    rib *= _inside(an.lung_top - 0.04 - y, 0.02) * _inside(y - chest_bottom, 0.03)
    rib *= _inside(0.035 - u, 0.01) * _inside(u - an.body_half_width + 0.02, 0.02)
    cv.ribs[win] = rib
    lungs = np.maximum(cv.lungs[0][win], cv.lungs[1][win])
    cv.image[win] += rib * (_RIB_OVER_BODY + (_RIB_OVER_LUNG - _RIB_OVER_BODY) * lungs)

    # Heart and aortic knob: soft tissue over the medial lungs, mostly right of the midline; drawn
    # after the ribs because a dense heart all but hides them.
    heart_level = an.body_level * 1.12
    half_w, half_h = _heart_extent(an)
    win, x, y = cv.window(
        an.heart_x - half_w - 0.01,
        an.heart_y - half_h - 0.01,
        an.heart_x + half_w + 0.01,
        an.heart_y + half_h + 0.01,
    )
    c, s = math.cos(an.heart_tilt), math.sin(an.heart_tilt)
    along = (x - an.heart_x) * c + (y - an.heart_y) * s
    across = (y - an.heart_y) * c - (x - an.heart_x) * s
    heart_r = np.sqrt((along / an.heart_long) ** 2 + (across / an.heart_short) ** 2)
    heart = _inside((heart_r - 1.0) * an.heart_short, 0.008)
    # Below the diaphragm the heart's density merges with the abdomen's: no outline there.
    heart *= _inside(y - max(an.lung_base) - 0.01, 0.02)
    cv.image[win] += (heart_level - cv.image[win]) * heart
    knob_x, knob_y = mid + 0.045, an.heart_y - half_h - 0.06
    win, x, y = cv.window(knob_x - 0.04, knob_y - 0.04, knob_x + 0.04, knob_y + 0.04)
    knob = _inside(np.sqrt((x - knob_x) ** 2 + (y - knob_y) ** 2) - 0.03, 0.008)
    cv.image[win] += (heart_level - cv.image[win]) * knob

    # Clavicles: bright bars from the top of the sternum out to the shoulders.
    for sign in _SIDE_SIGN:
        x0, y0 = mid + sign * 0.03, an.shoulder_y + 0.045
        x1, y1 = mid + sign * 0.27, an.shoulder_y - 0.005
        win, x, y = cv.window(min(x0, x1) - 0.03, y1 - 0.03, max(x0, x1) + 0.03, y0 + 0.03)
        vx, vy = x1 - x0, y1 - y0
        t = np.clip(((x - x0) * vx + (y - y0) * vy) / (vx * vx + vy * vy), 0.0, 1.0)
        dist = np.sqrt((x - x0 - t * vx) ** 2 + (y - y0 - t * vy) ** 2)
        cv.image[win] += 0.13 * _inside(dist - 0.011, 0.006)


# --------------------------------------------------------------------------------------------
# Findings: each draws a localised pattern and returns its pixel box (x, y, w, h)
# --------------------------------------------------------------------------------------------

Box = tuple[float, float, float, float]


def _draw_cardiomegaly(
    cv: _Canvas, an: _Anatomy, side: int, geo: np.random.Generator, tex: np.random.Generator
) -> Box:
    # The enlargement itself is an anatomy change (_film_anatomy); the box is the heart.
    half_w, half_h = _heart_extent(an)
    return cv.pixel_box(
        an.heart_x - half_w, an.heart_y - half_h, an.heart_x + half_w, an.heart_y + half_h
    )


def _draw_emphysema(
    cv: _Canvas, an: _Anatomy, side: int, geo: np.random.Generator, tex: np.random.Generator
) -> Box:
    """Hyperlucent, over-inflated lungs with low flat domes (an anatomy change, _film_anatomy),
    plus a few bullae: black air spaces with hairline walls in the upper zones."""
    for _ in range(int(geo.integers(1, 4))):
        bulla_side = int(geo.integers(0, 2))
        bx, by = _lung_point(an, bulla_side, geo.uniform(-0.2, 0.6), geo.uniform(0.12, 0.5))
        size = geo.uniform(0.025, 0.045)
        win, x, y = cv.window(bx - 1.3 * size, by - 1.3 * size, bx + 1.3 * size, by + 1.3 * size)
        distance = np.sqrt((x - bx) ** 2 + (y - by) ** 2) - size
        air = _inside(distance, cv.edge) * cv.lungs[bulla_side][win]
        wall = np.exp(-((distance / max(0.003, 0.7 / cv.size)) ** 2)) * cv.lungs[bulla_side][win]
        air_level = an.lung_level * 0.25 + _RIB_OVER_LUNG * cv.ribs[win]
        cv.image[win] += (air_level - cv.image[win]) * air + 0.12 * wall
    left, right = _lung_ellipse(an, 0), _lung_ellipse(an, 1)
    bottom = max(an.lung_base) + an.dome_depth
    return cv.pixel_box(left[0] - left[2] * 1.15, an.lung_top, right[0] + right[2] * 1.15, bottom)


def _draw_pneumothorax(
    cv: _Canvas, an: _Anatomy, side: int, geo: np.random.Generator, tex: np.random.Generator
) -> Box:
    """Air between chest wall and a collapsed lung: black, no vessel markings, and a thin bright
    visceral pleural line where the lung edge now lies. The lung retracts towards its hilum, so
    the air collects at the apex and along the lateral wall."""
    cx, cy, a, b = _lung_ellipse(an, side)
    sign = _SIDE_SIGN[side]
    shrink = geo.uniform(0.66, 0.8)
    collapsed = (
        cx - sign * (1 - shrink) * a * 0.9,
        cy + (1 - shrink) * b * 0.6,
        a * shrink,
        b * shrink,
    )
    win, x, y = cv.window(cx - 1.3 * a, an.lung_top - 0.02, cx + 1.3 * a, cy + b)
    lung = cv.lungs[side][win]
    radius, width = _lung_radius(x, y, collapsed)
    edge_distance = (radius - 1.0) * width
    inner = _inside(edge_distance, cv.edge)
    air = np.clip(lung - inner, 0.0, 1.0)
    pleural_line = np.exp(-((edge_distance / max(0.0035, 0.8 / cv.size)) ** 2)) * lung
    air_fill = an.lung_level * 0.3 + _RIB_OVER_LUNG * cv.ribs[win]
    cv.image[win] = cv.image[win] * (1.0 - air) + air_fill * air + 0.2 * pleural_line
    return cv.mask_box(win, air)


def _draw_effusion(
    cv: _Canvas, an: _Anatomy, side: int, geo: np.random.Generator, tex: np.random.Generator
) -> Box:
    """Fluid filling the lung base up to a meniscus that climbs the lateral wall: it whitens out
    the costophrenic angle and the dome on that side."""
    ellipse = _lung_ellipse(an, side)
    cx, cy, a, b = ellipse
    sign = _SIDE_SIGN[side]
    depth = geo.uniform(0.1, 0.17)  # fluid height above the costophrenic angle
    climb = geo.uniform(0.03, 0.06)  # how much higher the meniscus reaches at the chest wall
    level = an.lung_base[side] + an.dome_depth - depth
    win, x, y = cv.window(cx - 1.3 * a, level - climb - 0.02, cx + 1.3 * a, cy + b + 0.01)
    lateral = np.clip(sign * (x - cx) / a, 0.0, 1.2)
    surface = level - climb * lateral**2
    radius, width = _lung_radius(x, y, ellipse)
    # Water is as dense as soft tissue: below the meniscus the film shows the body alone, which
    # hides the dome's outline. The region reaches a little past the lung's soft border so no
    # trace of that border is left.
    dome = _dome(an, side, x)
    chest = _inside((radius - 1.0) * width - 0.012, cv.edge) * _inside(y - dome - 0.02, 0.02)
    fluid = chest * _inside(surface - y, cv.edge)
    fill = cv.body[win] + _RIB_OVER_BODY * cv.ribs[win]
    cv.image[win] += (fill - cv.image[win]) * fluid
    return cv.mask_box(win, fluid * cv.lungs[side][win], threshold=0.3)


def _draw_pleural_thickening(
    cv: _Canvas, an: _Anatomy, side: int, geo: np.random.Generator, tex: np.random.Generator
) -> Box:
    """A soft-tissue band of uneven thickness lining the lateral chest wall over a stretch."""
    ellipse = _lung_ellipse(an, side)
    cx, cy, a, b = ellipse
    sign = _SIDE_SIGN[side]
    start = an.lung_top + geo.uniform(0.2, 0.5) * (an.lung_base[side] - an.lung_top)
    length = geo.uniform(0.14, 0.22)
    thickness = geo.uniform(0.016, 0.026)
    wobble = geo.uniform(0.0, 2 * math.pi)
    win, x, y = cv.window(cx - 1.3 * a, start - 0.02, cx + 1.3 * a, start + length + 0.02)
    radius, width = _lung_radius(x, y, ellipse)
    depth_inside = (1.0 - radius) * width  # distance in from the lung border
    local = thickness * (1.0 + 0.3 * np.sin(y * 70.0 + wobble))
    band = _inside(depth_inside - local, cv.edge) * cv.lungs[side][win]
    band = band * _inside(0.35 * a - sign * (x - cx), 0.02)  # lateral wall only
    band = band * _inside(np.abs(y - start - length / 2) - length / 2, 0.015)
    fill = an.body_level * 1.05 + _RIB_OVER_LUNG * cv.ribs[win]
    cv.image[win] = cv.image[win] * (1.0 - band) + fill * band
    return cv.mask_box(win, band)


def _draw_edema(
    cv: _Canvas, an: _Anatomy, side: int, geo: np.random.Generator, tex: np.random.Generator
) -> Box:
    """Bilateral perihilar 'bat-wing' haze, fluffy, fading towards the periphery."""
    hilum_y = an.heart_y - _heart_extent(an)[1] + geo.uniform(-0.02, 0.02)
    win, x, y = cv.window(an.midline - 0.36, hilum_y - 0.24, an.midline + 0.36, hilum_y + 0.24)
    haze = np.zeros(np.broadcast_shapes(x.shape, y.shape), dtype=np.float32)
    for sign in _SIDE_SIGN:
        wing_x = an.midline + sign * geo.uniform(0.1, 0.13)
        sx, sy = geo.uniform(0.065, 0.085), geo.uniform(0.075, 0.095)
        haze = haze + np.exp(-0.5 * (((x - wing_x) / sx) ** 2 + ((y - hilum_y) / sy) ** 2))
    fluffy = 0.7 + 0.3 * np.clip(_smooth_noise(tex, haze.shape, 0.02 * cv.size), -1.0, 1.0)
    lungs = np.maximum(cv.lungs[0][win], cv.lungs[1][win])
    cv.image[win] += 0.26 * haze * fluffy * (0.25 + 0.75 * lungs)
    return cv.mask_box(win, haze, threshold=0.35, pad=0.0)


def _draw_pneumonia(
    cv: _Canvas, an: _Anatomy, side: int, geo: np.random.Generator, tex: np.random.Generator
) -> Box:
    """Lobar consolidation: a mottled opacity filling a lobe below a sharp fissure, its lower
    border fading out."""
    cx, cy, a, b = _lung_ellipse(an, side)
    fissure_y = an.lung_top + geo.uniform(0.38, 0.55) * (an.lung_base[side] - an.lung_top)
    slope = geo.uniform(-0.3, 0.3)
    extent = geo.uniform(0.12, 0.18)
    win, x, y = cv.window(cx - 1.3 * a, fissure_y - 0.06, cx + 1.3 * a, fissure_y + extent + 0.08)
    fissure = fissure_y + slope * (x - cx)
    lobe = cv.lungs[side][win] * _inside(fissure - y, cv.edge) * _inside(y - fissure - extent, 0.05)
    shape = lobe.shape
    mottle = 0.6 * _smooth_noise(tex, shape, 0.018 * cv.size) + 0.4 * _smooth_noise(
        tex, shape, 0.045 * cv.size
    )
    texture = 0.55 + 0.45 * np.clip(mottle, -1.0, 1.0)
    cv.image[win] += 0.32 * lobe * texture
    return cv.mask_box(win, lobe, threshold=0.4)


def _draw_infiltration(
    cv: _Canvas, an: _Anatomy, side: int, geo: np.random.Generator, tex: np.random.Generator
) -> Box:
    """Patchy, ill-defined opacity: a cluster of soft blotches with no sharp edge."""
    px, py = _lung_point(an, side, geo.uniform(-0.1, 0.55), geo.uniform(0.3, 0.75))
    spread = geo.uniform(0.055, 0.08)
    reach = spread + 0.08
    win, x, y = cv.window(px - reach, py - reach, px + reach, py + reach)
    patches = np.zeros(np.broadcast_shapes(x.shape, y.shape), dtype=np.float32)
    for _ in range(int(geo.integers(5, 10))):
        ox, oy = geo.uniform(-spread, spread, size=2)
        sigma = geo.uniform(0.018, 0.03)
        # A round Gaussian is separable: two 1-D exponentials and an outer product.
        blot_x = np.exp(-((x - px - ox) ** 2) / (2 * sigma**2))
        blot_y = np.exp(-((y - py - oy) ** 2) / (2 * sigma**2))
        patches += geo.uniform(0.6, 1.0) * blot_x * blot_y
    patches = np.minimum(patches, 1.0)
    # Smooth on purpose: the fine mottle belongs to pneumonia, so the two stay distinguishable.
    lungs = np.maximum(cv.lungs[0][win], cv.lungs[1][win])
    cv.image[win] += 0.3 * patches * (0.3 + 0.7 * lungs)
    return cv.mask_box(win, patches, threshold=0.35)


def _draw_consolidation(
    cv: _Canvas, an: _Anatomy, side: int, geo: np.random.Generator, tex: np.random.Generator
) -> Box:
    """Dense, homogeneous opacity with an irregular border, crossed by dark air bronchograms
    (air-filled bronchi branching out from the hilar side)."""
    sign = _SIDE_SIGN[side]
    px, py = _lung_point(an, side, geo.uniform(-0.2, 0.4), geo.uniform(0.35, 0.75))
    size = geo.uniform(0.055, 0.075)
    lobes = geo.uniform(0.0, 2 * math.pi, size=3)
    win, x, y = cv.window(px - 1.6 * size, py - 1.6 * size, px + 1.6 * size, py + 1.6 * size)
    dx, dy = x - px, y - py
    r = np.sqrt(dx * dx + dy * dy)
    theta = np.arctan2(dy, dx)
    border = size * (
        1.0
        + 0.14 * np.sin(2 * theta + lobes[0])
        + 0.09 * np.sin(3 * theta + lobes[1])
        + 0.05 * np.sin(5 * theta + lobes[2])
    )
    opacity = _inside(r - border, 0.01)
    # Bronchi: rays fanning out laterally from a point on the medial side of the opacity.
    origin_x, origin_y = px - sign * 0.8 * size, py + geo.uniform(-0.3, 0.3) * size
    bronchi = np.zeros_like(opacity)
    width = max(0.0055, 0.9 / cv.size)
    for angle in geo.uniform(-0.7, 0.7, size=int(geo.integers(3, 5))):
        ux, uy = sign * math.cos(angle), math.sin(angle)
        along = (x - origin_x) * ux + (y - origin_y) * uy
        across = -(x - origin_x) * uy + (y - origin_y) * ux
        ray = (
            np.exp(-((across / width) ** 2))
            * _inside(-along, 0.01)
            * _inside(along - 1.7 * size, 0.02)
        )
        bronchi = np.maximum(bronchi, ray)
    cv.image[win] += opacity * (0.42 - 0.3 * bronchi)
    return cv.mask_box(win, opacity)


def _draw_fibrosis(
    cv: _Canvas, an: _Anatomy, side: int, geo: np.random.Generator, tex: np.random.Generator
) -> Box:
    """Reticular net: criss-crossing fine bright lines in the upper zones (one or both lungs)."""
    sides = (0, 1) if geo.random() < 0.5 else (side,)
    period = geo.uniform(0.026, 0.034)
    angle = geo.uniform(0.0, math.pi / 2)
    ca, sa = math.cos(angle), math.sin(angle)
    zones = []
    for s in sides:
        zx, zy = _lung_point(an, s, 0.15, geo.uniform(0.22, 0.32))
        zones.append((zx, zy, 0.8 * an.lung_half_width, geo.uniform(0.1, 0.13)))
    x0 = min(z[0] - z[2] for z in zones) - 0.02
    x1 = max(z[0] + z[2] for z in zones) + 0.02
    y0 = min(z[1] - z[3] for z in zones) - 0.02
    y1 = max(z[1] + z[3] for z in zones) + 0.02
    win, x, y = cv.window(x0, y0, x1, y1)
    shape = np.broadcast_shapes(x.shape, y.shape)
    region = np.zeros(shape, dtype=np.float32)
    for zx, zy, rx, ry in zones:
        q = np.sqrt(((x - zx) / rx) ** 2 + ((y - zy) / ry) ** 2)
        region = np.maximum(region, np.clip((1.0 - q) / 0.35, 0.0, 1.0))
    region = region * np.maximum(cv.lungs[0][win], cv.lungs[1][win])
    # Warp the lattice so the net is irregular rather than a grid.
    warp = 0.2 * period * _smooth_noise(geo, shape, 0.6 * period * cv.size)
    u = (x * ca + y * sa + warp) / period
    v = (-x * sa + y * ca - warp) / period
    line = max(0.12, 0.9 / (period * cv.size))  # line half-width as a fraction of the period
    net = np.maximum(
        np.exp(-(((u - np.round(u)) / line) ** 2)), np.exp(-(((v - np.round(v)) / line) ** 2))
    )
    cv.image[win] += region * (0.06 + 0.22 * net)
    return cv.mask_box(win, region, threshold=0.2)


def _draw_atelectasis(
    cv: _Canvas, an: _Anatomy, side: int, geo: np.random.Generator, tex: np.random.Generator
) -> Box:
    """Plate-like atelectasis with volume loss at a lung base: the dome on that side is raised
    (abdominal density takes the lowest lung), and a dense linear band lies just above it with
    hazier collapsed lung beneath. The box covers both."""
    sign = _SIDE_SIGN[side]
    cx, cy, a, b = _lung_ellipse(an, side)
    raised_base = an.lung_base[side] - geo.uniform(0.035, 0.055)
    px, _ = _lung_point(an, side, geo.uniform(0.0, 0.45), 1.0)
    py = raised_base - geo.uniform(0.035, 0.06)
    length = geo.uniform(0.13, 0.18)
    thickness = geo.uniform(0.018, 0.026)
    angle = sign * geo.uniform(-0.1, 0.35)
    ca, sa = math.cos(angle), math.sin(angle)
    bottom = an.lung_base[side] + 1.5 * an.dome_depth
    win, x, y = cv.window(cx - 1.3 * a, py - 0.6 * length, cx + 1.3 * a, bottom)
    lung = cv.lungs[side][win]
    # Below the raised dome the film shows soft tissue alone; the region reaches a little past the
    # lung's soft border so no trace of the old border is left.
    radius, width = _lung_radius(x, y, (cx, cy, a, b))
    chest = _inside((radius - 1.0) * width - 0.012, cv.edge)
    raised_dome = _dome(an, side, x, base=raised_base)
    lifted = chest * _inside(raised_dome - y, 0.006)
    fill = cv.body[win] + _RIB_OVER_BODY * cv.ribs[win]
    cv.image[win] += (fill - cv.image[win]) * lifted
    u = (x - px) * ca + (y - py) * sa
    v = -(x - px) * sa + (y - py) * ca
    along = _inside(np.abs(u) - length / 2, length * 0.2)
    band = _inside(np.abs(v) - thickness / 2, cv.edge) * along
    below = _inside(-v, 0.01) * _inside(v - 0.035, 0.02) * along  # collapsed lung under the plate
    cv.image[win] += 0.36 * band + 0.08 * below * lung
    return cv.mask_box(win, np.maximum(band, lifted * lung))


def _draw_mass(
    cv: _Canvas, an: _Anatomy, side: int, geo: np.random.Generator, tex: np.random.Generator
) -> Box:
    """A large (> 3 cm), bright, round-to-lobulated mass with a fairly sharp border."""
    px, py = _lung_point(an, side, geo.uniform(-0.3, 0.5), geo.uniform(0.2, 0.7))
    size = geo.uniform(0.05, 0.07)
    lobes = geo.uniform(0.0, 2 * math.pi, size=2)
    win, x, y = cv.window(px - 1.4 * size, py - 1.4 * size, px + 1.4 * size, py + 1.4 * size)
    r = np.sqrt((x - px) ** 2 + (y - py) ** 2)
    theta = np.arctan2(y - py, x - px)
    border = size * (
        1.0 + 0.07 * np.sin(3 * theta + lobes[0]) + 0.04 * np.sin(5 * theta + lobes[1])
    )
    blob = _inside(r - border, 0.006)
    cv.image[win] += 0.38 * blob * (1.05 - 0.25 * (r / size) ** 2)
    return cv.mask_box(win, blob)


def _draw_nodule(
    cv: _Canvas, an: _Anatomy, side: int, geo: np.random.Generator, tex: np.random.Generator
) -> Box:
    """A small (< 3 cm), very bright, sharply marginated round nodule anywhere in a lung."""
    px, py = _lung_point(an, side, geo.uniform(-0.4, 0.7), geo.uniform(0.12, 0.8))
    size = geo.uniform(0.015, 0.022)
    win, x, y = cv.window(px - 2 * size, py - 2 * size, px + 2 * size, py + 2 * size)
    r = np.sqrt((x - px) ** 2 + (y - py) ** 2)
    blob = _inside(r - size, max(cv.edge, 0.004))
    cv.image[win] += 0.45 * blob
    return cv.mask_box(win, blob, pad=0.015)


def _draw_hernia(
    cv: _Canvas, an: _Anatomy, side: int, geo: np.random.Generator, tex: np.random.Generator
) -> Box:
    """Hiatus hernia: a round density behind the heart, just above the domes near the midline,
    holding a gas bubble with a flat air-fluid level."""
    size = geo.uniform(0.045, 0.062)
    px = an.midline + geo.uniform(-0.01, 0.04)
    py = min(an.lung_base) - geo.uniform(0.0, 0.04)
    win, x, y = cv.window(px - 1.3 * size, py - 1.3 * size, px + 1.3 * size, py + 1.3 * size)
    sac = _inside(np.sqrt((x - px) ** 2 + (y - py) ** 2) - size, 0.006)
    bx, by = px + geo.uniform(-0.3, 0.3) * size, py - 0.3 * size
    gas = _inside(np.sqrt((x - bx) ** 2 + (y - by) ** 2) - 0.45 * size, cv.edge)
    gas = gas * _inside(y - (by + 0.1 * size), cv.edge)  # fluid fills the bubble's lower part
    cv.image[win] += 0.24 * sac - 0.45 * gas
    return cv.mask_box(win, sac)


# Drawing order: findings that replace lung content first, additive opacities after, so a plate
# of atelectasis stays visible on top of an effusion.
_DRAWERS = {
    "Emphysema": _draw_emphysema,
    "Cardiomegaly": _draw_cardiomegaly,
    "Pneumothorax": _draw_pneumothorax,
    "Effusion": _draw_effusion,
    "Pleural_Thickening": _draw_pleural_thickening,
    "Edema": _draw_edema,
    "Pneumonia": _draw_pneumonia,
    "Infiltration": _draw_infiltration,
    "Consolidation": _draw_consolidation,
    "Fibrosis": _draw_fibrosis,
    "Atelectasis": _draw_atelectasis,
    "Mass": _draw_mass,
    "Nodule": _draw_nodule,
    "Hernia": _draw_hernia,
}
assert set(_DRAWERS) == set(FINDINGS)


def _write_film(job: tuple[_FilmSpec, _Anatomy, int, int, Path]) -> dict[str, Box]:
    """Draw one film, save it as PNG and return its boxes (a top-level function, so a process
    pool can run it)."""
    film, anatomy, size, seed, path = job
    pixels, boxes = _render_film(film, anatomy, size, seed)
    # A fixed compression level: the PNG bytes must not depend on Pillow's default.
    Image.fromarray(pixels).save(path, compress_level=1)
    return boxes


def _render_film(
    film: _FilmSpec, patient: _Anatomy, size: int, seed: int
) -> tuple[np.ndarray, dict[str, Box]]:
    """Draw one film: 8-bit pixels and the pixel box of each of its findings."""
    rng = _rng("film", seed, film.patient_id, film.follow_up)
    # Positioning differs a little between visits: shift and magnification.
    shift = (
        float(np.clip(rng.normal(0.0, 0.012), -0.03, 0.03)),
        float(np.clip(rng.normal(0.0, 0.012), -0.03, 0.03)),
    )
    cv = _Canvas(size, shift, float(rng.uniform(0.96, 1.04)))
    an = _film_anatomy(patient, film, seed)
    _draw_anatomy(cv, an)

    boxes: dict[str, Box] = {}
    for finding, draw in _DRAWERS.items():
        if finding in film.findings:
            index = FINDINGS.index(finding)
            # Geometry comes from the patient's stream, so a persisting finding stays in place;
            # texture from a stream of this film and finding, so the film's noise is the same
            # with or without the finding (which lets tests isolate a finding).
            geo = _rng("geometry", seed, film.patient_id, index)
            tex = _rng("texture", seed, film.patient_id, film.follow_up, index)
            boxes[finding] = draw(cv, an, an.finding_side[index], geo, tex)

    # Film: mottle and quantum noise, then this visit's exposure (gain) and contrast (gamma),
    # applied through a lookup table on finely quantised intensities (cheaper than a power).
    image = cv.image + 0.015 * _smooth_noise(rng, (size, size), 0.04 * size)
    image += rng.uniform(0.012, 0.022) * rng.standard_normal((size, size), dtype=np.float32)
    gain = rng.uniform(0.94, 1.06) * (0.97 if film.view == "AP" else 1.0)
    gamma = rng.uniform(0.9, 1.1)
    levels = np.linspace(0.0, _MAX_INTENSITY, _LUT_SIZE)
    lut = np.clip(gain * levels**gamma * 255.0 + 0.5, 0, 255).astype(np.uint8)
    np.clip(image, 0.0, _MAX_INTENSITY, out=image)
    pixels = lut[(image * ((_LUT_SIZE - 1) / _MAX_INTENSITY) + 0.5).astype(np.int32)]
    return pixels, {name: boxes[name] for name in FINDINGS if name in boxes}
