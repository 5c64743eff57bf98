"""Tiny copies of public chest X-ray datasets in their published layouts: same file and folder
names, same columns in the same order, same value conventions (CheXpert's 1.0 / 0.0 / -1.0 /
blank, MIMIC's gzipped CSVs, PadChest's list-literal Labels and 16-bit PNGs, Indiana's
';'-separated Problems). The readers of chexvision_lib/data/sources/ are tested on them and the
cross-dataset study runs on them in CI.

Each writer takes a folder and a seed, writes 10-40 images of at most 64 px (several per patient,
frontal and lateral) and returns the root to hand to the reader. The pixels are real NIH
radiographs from ../shared/realdata/nih/images, cropped, flipped and resized, when that folder is
there, else synthetic chest-like pictures (`real=False` forces those); both are seeded.
Labels are drawn at random but every convention the reader must handle is forced into at least
one row (see each writer), so the tests that count them from the CSVs also check they occur.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

REALDATA = Path(
    os.environ.get(
        "CHEXVISION_REALDATA", Path(__file__).resolve().parents[2] / "shared" / "realdata"
    )
)
SIDE = 64

# The 14 CheXpert observations in CheXpert's CSV order (MIMIC's files list them alphabetically).
CHEXPERT_OBSERVATIONS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
CHEXPERT_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBSERVATIONS)
MIMIC_LABEL_COLUMNS = ("subject_id", "study_id", *sorted(CHEXPERT_OBSERVATIONS))
MIMIC_METADATA_COLUMNS = (
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
MIMIC_SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
PADCHEST_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
PADCHEST_COLUMNS = (
    "ImageID",
    "ImageDir",
    "StudyDate_DICOM",
    "StudyID",
    "PatientID",
    "PatientBirth",
    "PatientSex_DICOM",
    "ViewPosition_DICOM",
    "Projection",
    "MethodProjection",
    "Pediatric",
    "Modality_DICOM",
    "Manufacturer_DICOM",
    "PhotometricInterpretation_DICOM",
    "PixelRepresentation_DICOM",
    "PixelAspectRatio_DICOM",
    "SpatialResolution_DICOM",
    "BitsStored_DICOM",
    "WindowCenter_DICOM",
    "WindowWidth_DICOM",
    "Rows_DICOM",
    "Columns_DICOM",
    "XRayTubeCurrent_DICOM",
    "Exposure_DICOM",
    "ExposureInuAs_DICOM",
    "ExposureTime",
    "RelativeXRayExposure_DICOM",
    "ReportID",
    "Report",
    "MethodLabel",
    "Labels",
    "Localizations",
    "LabelsLocalizationsBySentence",
    "labelCUIS",
    "LocalizationsCUIS",
)
INDIANA_REPORT_COLUMNS = (
    "uid",
    "MeSH",
    "Problems",
    "image",
    "indication",
    "comparison",
    "findings",
    "impression",
)
INDIANA_PROJECTION_COLUMNS = ("uid", "filename", "projection")


# --- pixels ---------------------------------------------------------------------------------------
@functools.cache
def _real_radiographs() -> tuple[np.ndarray, ...]:
    """Up to 12 real NIH radiographs at 128 px (decoded once per process), or none."""
    folder = REALDATA / "nih" / "images"
    if not folder.is_dir():
        return ()
    pictures = []
    for path in sorted(folder.glob("*.png"))[:12]:
        with Image.open(path) as image:
            pictures.append(np.asarray(image.convert("L").resize((128, 128)), dtype=np.uint8))
    return tuple(pictures)


def _synthetic(rng: np.random.Generator) -> np.ndarray:
    """A 128 px chest-like picture: a bright body, two dark lung fields, a mediastinum, noise."""
    y, x = np.mgrid[0:128, 0:128] / 128.0
    picture = 150 + 50 * (1 - 4 * (x - 0.5) ** 2)
    for centre in (0.3 + rng.normal(0, 0.02), 0.7 + rng.normal(0, 0.02)):
        lung = ((x - centre) / 0.16) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1
        picture = np.where(lung, 60 + rng.uniform(-15, 15), picture)
    picture = picture + rng.normal(0, 8, picture.shape)
    return np.clip(picture, 0, 255).astype(np.uint8)


class Pixels:
    """Seeded grey pictures, real radiographs when at hand (see the module docstring)."""

    def __init__(self, seed: int, real: bool | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.real = _real_radiographs() if real is not False else ()
        if real and not self.real:
            raise FileNotFoundError(f"no real radiographs in {REALDATA / 'nih' / 'images'}")

    def grey(self, width: int = SIDE, height: int = SIDE) -> np.ndarray:
        if self.real:
            base = self.real[int(self.rng.integers(len(self.real)))]
            top, left = self.rng.integers(0, 17, size=2)
            base = base[top : top + 112, left : left + 112]
            base = base[:, ::-1] if self.rng.random() < 0.5 else base
        else:
            base = _synthetic(self.rng)
        resized = Image.fromarray(np.ascontiguousarray(base)).resize((width, height))
        return np.asarray(resized, dtype=np.uint8)

    def save_jpeg(self, path: Path, width: int = SIDE, height: int = SIDE) -> tuple[int, int]:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(self.grey(width, height)).save(path, quality=90)
        return height, width

    def save_png(self, path: Path, *, bits: int = 8, width: int = SIDE, height: int = SIDE):
        """An 8-bit grey PNG, or a 16-bit one holding `bits`-bit values (PadChest: 12 of 16)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        grey = self.grey(width, height)
        if bits > 8:
            scale = (2**bits - 1) / 255.0
            noise = self.rng.integers(0, max(1, int(scale)), size=grey.shape)
            wide = np.clip(grey * scale + noise, 0, 2**bits - 1).astype(np.uint16)
            Image.fromarray(wide).save(path)  # mode I;16: a 16-bit grey PNG
        else:
            Image.fromarray(grey).save(path)


def _write_csv(path: Path, rows: list[dict], columns: tuple[str, ...], *, index: bool = False):
    """Rows as a CSV with exactly `columns` (blanks empty, as the releases write them); .gz paths
    are gzipped with a fixed mtime, so the same seed gives the same bytes."""
    frame = pd.DataFrame(rows, columns=list(columns), dtype=object).fillna("")
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_text(path, frame.to_csv(index=index))


# --- CheXpert ------------------------------------------------------------------------------------
def _chexpert_values(rng: np.random.Generator, *, consensus: bool) -> dict[str, str]:
    """One image's 14 observations. train.csv (the labeler): 1.0 / 0.0 / -1.0 / blank, No Finding
    1.0 only when no pathology is positive or uncertain, else blank. valid.csv (radiologists):
    1.0 / 0.0 everywhere. A third of the images are normal studies (only No Finding, perhaps a
    support device)."""
    if consensus:
        choices, weights = ["1.0", "0.0"], [0.3, 0.7]
    else:
        choices, weights = ["1.0", "0.0", "-1.0", ""], [0.2, 0.1, 0.15, 0.55]
    values = {o: str(rng.choice(choices, p=weights)) for o in CHEXPERT_OBSERVATIONS[1:]}
    if rng.random() < 1 / 3:
        values = {o: "0.0" if consensus else "" for o in values}
        values["Support Devices"] = str(rng.choice(choices[:2] if consensus else ["1.0", ""]))
    pathologies = [v for o, v in values.items() if o != "Support Devices"]
    clear = not any(v in ("1.0", "-1.0") for v in pathologies)
    values["No Finding"] = "1.0" if clear else ("0.0" if consensus else "")
    return values


def _chexpert_rows(
    pixels: Pixels, base: Path, prefix: str, split: str, patients: range, consensus: bool
) -> list[dict]:
    rng, rows = pixels.rng, []
    for patient in patients:
        for study in range(1, int(rng.integers(1, 3)) + 1):
            age, sex = str(int(rng.integers(18, 91))), str(rng.choice(["Male", "Female"]))
            kinds = ["frontal", "lateral"] if consensus or rng.random() < 0.6 else ["frontal"]
            for number, kind in enumerate(kinds, start=1):
                relative = f"{split}/patient{patient:05d}/study{study}/view{number}_{kind}.jpg"
                pixels.save_jpeg(base / relative, width=54 if kind == "frontal" else 64)
                rows.append(
                    {
                        "Path": f"{prefix}/{relative}",
                        "Sex": sex,
                        "Age": age,
                        "Frontal/Lateral": kind.capitalize(),
                        "AP/PA": str(rng.choice(["AP", "PA"], p=[0.7, 0.3]))
                        if kind == "frontal"
                        else "",
                        **_chexpert_values(rng, consensus=consensus),
                    }
                )
    return rows


def write_chexpert(
    root: Path, *, seed: int = 0, layout: str = "small", real: bool | None = None
) -> Path:
    """CheXpert: `layout` "small" (CheXpert-v1.0-small/, as the Kaggle "ashery/chexpert" mount
    and Stanford's small release), "full" (CheXpert-v1.0/) or "kaggle_flat" (train.csv,
    valid.csv, train/, valid/ straight in the root, Path still "CheXpert-v1.0-small/..."). Train:
    patients 1-8, 1-2 studies each, frontal (+ lateral); valid: patients 64541-64543, frontal +
    lateral, consensus 1.0/0.0 labels. Forced train rows: a No Finding 1.0 + Support Devices
    image, an image whose only mention is an uncertain Edema, a Sex "Unknown", a frontal with
    AP/PA blank and one with AP/PA "LL"."""
    if layout not in ("small", "full", "kaggle_flat"):
        raise ValueError(f"layout: {layout!r} is not small, full or kaggle_flat")
    prefix = "CheXpert-v1.0" if layout == "full" else "CheXpert-v1.0-small"
    base = root if layout == "kaggle_flat" else root / prefix
    pixels = Pixels(seed, real)
    train = _chexpert_rows(pixels, base, prefix, "train", range(1, 9), consensus=False)
    valid = _chexpert_rows(pixels, base, prefix, "valid", range(64541, 64544), consensus=True)
    blank = dict.fromkeys(CHEXPERT_OBSERVATIONS, "")
    train[0].update(blank, **{"No Finding": "1.0", "Support Devices": "1.0"})
    train[1].update(blank, Edema="-1.0")
    train[2]["Sex"] = "Unknown"
    frontals = [row for row in train if row["Frontal/Lateral"] == "Frontal"]
    frontals[3]["AP/PA"], frontals[4]["AP/PA"] = "", "LL"
    _write_csv(base / "train.csv", train, CHEXPERT_COLUMNS)
    _write_csv(base / "valid.csv", valid, CHEXPERT_COLUMNS)
    return root


# --- MIMIC-CXR-JPG -------------------------------------------------------------------------------
# Studies as the images they hold: (ViewPosition, ViewCodeSequence_CodeMeaning, orientation).
_MIMIC_STUDIES = (
    (("PA", "postero-anterior", "Erect"), ("LATERAL", "lateral", "Erect")),
    (("AP", "antero-posterior", "Recumbent"),),
    (("PA", "postero-anterior", "Erect"), ("LL", "left lateral", "Erect")),
    (("AP", "antero-posterior", "Erect"), ("", "", "")),
    (("AP AXIAL", "antero-posterior", "Erect"), ("PA", "postero-anterior", "Erect")),
)


def _mimic_labels(rng: np.random.Generator) -> dict[str, str]:
    values = _chexpert_values(rng, consensus=False)
    return {name: values[name] for name in sorted(CHEXPERT_OBSERVATIONS)}


def write_mimic(
    root: Path, *, seed: int = 0, version: str = "2.0.0", real: bool | None = None
) -> Path:
    """MIMIC-CXR-JPG below root/physionet.org/files/mimic-cxr-jpg/<version>/: the four gzipped
    CSVs (file names say 2.0.0 in both releases) and files/pXX/pSUBJECT/sSTUDY/DICOM.jpg. Seven
    subjects, 1-3 studies each, 1-2 images per study with the view positions of _MIMIC_STUDIES
    (PA, AP, LATERAL, LL, blank, AP AXIAL); split per subject (train, validate, test all occur);
    one study has no row in either label file; negbio differs from chexpert in some labels."""
    base = root / "physionet.org" / "files" / "mimic-cxr-jpg" / version
    pixels = Pixels(seed, real)
    rng = pixels.rng
    subjects = sorted({int(s) for s in rng.integers(10_000_000, 19_999_999, size=7)})
    splits = ["train", "validate", "test", *rng.choice(["train", "validate", "test"], 4)]
    metadata, split_rows, chexpert, negbio = [], [], [], []
    study_ids = iter(sorted(rng.choice(np.arange(50_000_000, 59_999_999), 30, replace=False)))
    templates = iter(np.resize(np.arange(len(_MIMIC_STUDIES)), 30))  # every pattern occurs
    for subject, split in zip(subjects, splits, strict=False):
        for _ in range(int(rng.integers(1, 4))):
            study = int(next(study_ids))
            template = _MIMIC_STUDIES[int(next(templates))]
            for position, meaning, orientation in template:
                dicom = "-".join(f"{int(v):08x}" for v in rng.integers(0, 2**32, size=5))
                folder = base / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}"
                rows, columns = pixels.save_jpeg(folder / f"{dicom}.jpg", width=54)
                procedure = "CHEST (PA AND LAT)" if position != "AP" else "CHEST (PORTABLE AP)"
                metadata.append(
                    dict(
                        zip(
                            MIMIC_METADATA_COLUMNS,
                            (dicom, subject, study, procedure, position, rows, columns)
                            + (f"21{int(rng.integers(10, 99))}0506", "213014.531")
                            + (procedure, meaning, orientation),
                            strict=True,
                        )
                    )
                )
                split_rows.append(
                    {"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": split}
                )
            labels = _mimic_labels(rng)
            chexpert.append({"subject_id": subject, "study_id": study, **labels})
            flipped = {k: ("1.0" if v == "-1.0" else v) for k, v in labels.items()}
            negbio.append({"subject_id": subject, "study_id": study, **flipped})
    del chexpert[1], negbio[1]  # a study without labels: its images are skipped
    chexpert[0].update({"Edema": "-1.0", "Cardiomegaly": "", "Pleural Effusion": "1.0"})
    for name, rows, columns in (
        ("metadata", metadata, MIMIC_METADATA_COLUMNS),
        ("split", split_rows, MIMIC_SPLIT_COLUMNS),
        ("chexpert", chexpert, MIMIC_LABEL_COLUMNS),
        ("negbio", negbio, MIMIC_LABEL_COLUMNS),
    ):
        _write_csv(base / f"mimic-cxr-2.0.0-{name}.csv.gz", rows, columns)
    return root


# --- PadChest ------------------------------------------------------------------------------------
# Labels cells as written in the CSV (one per study: labels come from its report), stray spaces
# as in the release.
_PADCHEST_LABELS = (
    "['normal']",
    "['normal']",
    "['pleural effusion', ' cardiomegaly']",
    "['unchanged']",
    "['exclude']",
    "['suboptimal study']",
    "['normal', 'unchanged']",
    "['chronic changes', 'kyphosis ']",
    "['loculated pleural effusion', 'nodule', 'laminar atelectasis']",
    "['normal']",
    "['hiatal hernia', 'aortic elongation']",
    "['normal']",
    "['infiltrates', 'pneumonia', 'consolidation']",
    "['pulmonary fibrosis', 'emphysema', 'apical pleural thickening']",
    "['pulmonary mass', 'pneumothorax', 'pulmonary edema']",
    "['normal']",
    "[]",
    "",
)
_PADCHEST_STUDIES = (
    ("PA", "L"),
    ("AP",),
    ("AP_horizontal",),
    ("PA", "L"),
    ("COSTAL",),
    ("PA",),
    ("PA", "L"),
    ("EXCLUDE",),
)
_PADCHEST_VIEW_DICOM = {"PA": "POSTEROANTERIOR", "L": "LATERAL", "AP": "AP", "AP_horizontal": "AP"}


def _padchest_id(rng: np.random.Generator, digits: int) -> str:
    return "".join(str(d) for d in rng.integers(0, 10, size=digits))


def _padchest_row(rng: np.random.Generator, patient: dict, study: dict, image: dict) -> dict:
    labels = image["Labels"]
    return {
        **image,
        **study,
        **patient,
        "MethodProjection": str(rng.choice(["Manual review of DICOM fields", "recursive LR"])),
        "Pediatric": "No",
        "Modality_DICOM": str(rng.choice(["CR", "DX"])),
        "Manufacturer_DICOM": str(
            rng.choice(["PhilipsMedicalSystems", "ImagingDynamicsCompanyLtd"])
        ),
        "PhotometricInterpretation_DICOM": "MONOCHROME2",
        "PixelRepresentation_DICOM": "0",
        "SpatialResolution_DICOM": "0.143",
        "BitsStored_DICOM": "12",
        "WindowCenter_DICOM": "2048.0",
        "WindowWidth_DICOM": "4096.0",
        "ExposureTime": "",
        "ReportID": str(int(rng.integers(1, 200_000))),
        "Report": "sin hallazg patolog relev ." if labels == "['normal']" else "cambi cronic .",
        "MethodLabel": str(rng.choice(["Physician", "RNN_model"])),
        "Localizations": "['loc basal']" if "effusion" in labels else "[]",
        "LabelsLocalizationsBySentence": f"[{labels}]" if labels else "",
        "labelCUIS": "C0032227" if "effusion" in labels else "",
        "LocalizationsCUIS": "[]",
    }


def write_padchest(
    root: Path,
    *,
    seed: int = 0,
    compressed: bool = False,
    index_column: bool = False,
    real: bool | None = None,
) -> Path:
    """PadChest: the label CSV (`compressed`: .csv.gz; `index_column`: with pandas' unnamed
    leading index, as some re-saved copies have) in the root, 16-bit PNGs (12-bit values) in
    numbered folders root/<ImageDir>/<ImageID>. 16 patients, 1-2 studies each, 1-2 images per
    study, every Projection (PA, L, AP, AP_horizontal, COSTAL, EXCLUDE); the studies' Labels cycle
    through _PADCHEST_LABELS (normal, findings with stray spaces, the non-finding tags, [] and a
    blank); one PatientBirth and one PatientSex_DICOM are blank."""
    pixels = Pixels(seed, real)
    rng = pixels.rng
    rows, label_cycle = [], iter(np.resize(np.arange(len(_PADCHEST_LABELS)), 60))
    templates = iter(np.resize(np.arange(len(_PADCHEST_STUDIES)), 30))  # every Projection occurs
    for p in range(16):
        birth = "" if p == 3 else f"{int(rng.integers(1920, 2000))}.0"
        sex = "" if p == 4 else str(rng.choice(["M", "F"]))
        patient = {
            "PatientID": _padchest_id(rng, 36),
            "PatientBirth": birth,
            "PatientSex_DICOM": sex,
        }
        for _ in range(2 if p < 8 else int(rng.integers(1, 3))):  # >= 22 studies: every Labels
            study_id = _padchest_id(rng, 38)
            date = f"{int(rng.integers(2009, 2018))}{int(rng.integers(1, 13)):02d}15"
            study = {"StudyID": study_id, "StudyDate_DICOM": date}
            labels = _PADCHEST_LABELS[int(next(label_cycle))]  # one report: one Labels per study
            for projection in _PADCHEST_STUDIES[int(next(templates))]:
                image_id = f"{study_id}_{_padchest_id(rng, 6)}.png"
                image_dir = str(int(rng.integers(0, 3)))
                pixels.save_png(root / image_dir / image_id, bits=12)
                image = {
                    "ImageID": image_id,
                    "ImageDir": image_dir,
                    "ViewPosition_DICOM": _PADCHEST_VIEW_DICOM.get(projection, ""),
                    "Projection": projection,
                    "Rows_DICOM": str(SIDE),
                    "Columns_DICOM": str(SIDE),
                    "Labels": labels,
                }
                rows.append(_padchest_row(rng, patient, study, image))
    name = PADCHEST_CSV + (".gz" if compressed else "")
    _write_csv(root / name, rows, PADCHEST_COLUMNS, index=index_column)
    return root


# --- Indiana University (Kaggle "raddar/chest-xrays-indiana-university") -------------------------
# (MeSH, Problems) of a report, as the Kaggle CSV spells them.
_INDIANA_REPORTS = (
    ("normal", "normal"),
    ("Cardiomegaly/borderline;Pulmonary Artery/enlarged", "Cardiomegaly;Pulmonary Artery"),
    ("normal", "normal"),
    ("Pulmonary Atelectasis/lingula;Opacity/lung", "Pulmonary Atelectasis;Opacity"),
    ("Calcified Granuloma/lung/upper lobe/right", "Calcified Granuloma"),
    ("normal", "normal"),
    ("Pleural Effusion/left/small; Cardiomegaly/mild", "Pleural Effusion; Cardiomegaly"),
    ("Pulmonary Emphysema;Hernia, Hiatal", "Pulmonary Emphysema;Hernia, Hiatal"),
    ("normal", "normal"),
    ("technical quality of image unsatisfactory", "technical quality of image unsatisfactory"),
    ("Infiltrate/lung/base/left;Pneumonia", "Infiltrate;Pneumonia"),
    ("normal", "normal"),
    ("Nodule/lung/upper lobe;Mass", "Nodule;Mass"),
    ("Pulmonary Edema;Consolidation/lung/lower lobe", "Pulmonary Edema;Consolidation"),
    ("normal", "normal"),
    ("Pneumothorax/apex/right/small", "Pneumothorax"),
    ("normal", "normal"),
    ("Lung/hypoinflation", "Lung;Hypoinflation"),
)
# The projections of one report's images.
_INDIANA_IMAGES = (
    ("Frontal", "Lateral"),
    ("Frontal",),
    ("Frontal", "Frontal", "Lateral"),
    ("Lateral",),
)


def write_indiana(
    root: Path, *, seed: int = 0, n_reports: int = 22, real: bool | None = None
) -> Path:
    """The Kaggle Indiana University copy: indiana_reports.csv, indiana_projections.csv and 8-bit
    grey PNGs images/images_normalized/<uid>_IM-<series>-<number>.dcm.png. `n_reports` reports
    cycling through _INDIANA_REPORTS (normal ones, ~40%, as in Open-i; mapped and unmapped
    terms, a stray space, "Hernia, Hiatal" with its comma), their images in the frontal/lateral
    patterns of _INDIANA_IMAGES (a report with two frontals, one with only a lateral); the last
    report has no images."""
    pixels = Pixels(seed, real)
    rng = pixels.rng
    reports, projections = [], []
    for uid in range(1, n_reports + 1):
        mesh, problems = _INDIANA_REPORTS[(uid - 1) % len(_INDIANA_REPORTS)]
        reports.append(
            {
                "uid": uid,
                "MeSH": mesh,
                "Problems": problems,
                "image": "Xray Chest PA and Lateral",
                "indication": "XXXX-year-old male, chest pain.",
                "comparison": "None.",
                "findings": "The heart is normal in size. The mediastinum is unremarkable.",
                "impression": "No acute disease." if problems == "normal" else "See findings.",
            }
        )
        if uid == n_reports:
            continue
        series = int(rng.integers(1, 4000))
        views = _INDIANA_IMAGES[uid % len(_INDIANA_IMAGES)]
        for number, projection in enumerate(views, start=1):
            filename = f"{uid}_IM-{series:04d}-{number}001.dcm.png"
            pixels.save_png(root / "images" / "images_normalized" / filename)
            projections.append({"uid": uid, "filename": filename, "projection": projection})
    _write_csv(root / "indiana_reports.csv", reports, INDIANA_REPORT_COLUMNS)
    _write_csv(root / "indiana_projections.csv", projections, INDIANA_PROJECTION_COLUMNS)
    return root


def rewrite_cell(path: Path, row: int, column: str, value: str) -> None:
    """Set one cell of a fixture CSV (row numbered as the readers' errors number it: 1 = header),
    keeping every other cell's text as written; for the tests of bad input."""
    compression = "gzip" if path.suffix == ".gz" else None
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, compression=compression)
    frame.loc[row - 2, column] = value
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    _write_text(path, buffer.getvalue())


def drop_column(path: Path, column: str) -> None:
    """Remove one column of a fixture CSV; for the tests of bad input."""
    compression = "gzip" if path.suffix == ".gz" else None
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, compression=compression)
    _write_text(path, frame.drop(columns=column).to_csv(index=False))


def _write_text(path: Path, text: str) -> None:
    if path.suffix == ".gz":
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as handle:
            handle.write(text.encode("utf-8"))
    else:
        path.write_text(text, encoding="utf-8")
