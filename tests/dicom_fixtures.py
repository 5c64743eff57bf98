"""DICOM test files written with pydicom; tiny RSNA and VinDr-CXR copies in their published layouts.

`write_dicom` writes one file from a pixel array (synthetic, or a real NIH radiograph through
`radiograph`, which skips the test when ../shared/realdata is absent). `write_rsna` and
`write_vindr` write 10-30 small DICOMs with the CSVs exactly as the releases name and fill them:
column names, value conventions (empty boxes for negatives, class rows duplicated per box, one
row per reader), folder structure and file names. The pixels are synthetic; the tests compute
every expected count from the CSVs written here, never from constants.
"""

from __future__ import annotations

import io
import uuid
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_encoder
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

from chexvision_lib.data.image_io import load_grey

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # what the RSNA challenge's files are


def synthetic_radiograph(
    shape: tuple[int, int] = (64, 64), *, seed: int = 0, maximum: int = 255
) -> np.ndarray:
    """A smooth bright-centre image with noise, values 0..maximum (uint8, or uint16 above 255),
    always spanning the whole range."""
    rng = np.random.default_rng(seed)
    rows, columns = shape
    y, x = np.mgrid[0:rows, 0:columns]
    blob = np.exp(-(((y - rows / 2) / rows) ** 2 + ((x - columns / 2) / columns) ** 2) * 4)
    image = blob + 0.15 * rng.random(shape)
    image = (image - image.min()) / (image.max() - image.min()) * maximum
    return np.round(image).astype(np.uint8 if maximum <= 255 else np.uint16)


def radiograph(name: str | None = None, size: int = 128) -> np.ndarray:
    """A real NIH radiograph (8-bit grey), resized to `size`; skips the test without realdata."""
    from conftest import realdata

    folder = realdata("nih", "images")
    path = folder / name if name else sorted(folder.glob("*.png"))[0]
    return load_grey(path, size)


def _pixel_module(ds: Dataset, pixels: np.ndarray, photometric: str, bits_stored: int | None):
    colour = photometric == "RGB"
    frames = pixels.shape[0] if pixels.ndim == 3 and not colour else 1
    rows, columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds.Rows, ds.Columns = int(rows), int(columns)
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if np.issubdtype(pixels.dtype, np.signedinteger) else 0


def _encodable(syntax: str) -> bool:
    try:
        return get_encoder(syntax).is_available
    except NotImplementedError:
        return False


def write_dicom(
    path: str | Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    voi_function: str | None = None,
    voi_lut: tuple[list[int], int, int] | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    patient_id: str | None = None,
    sex: str | None = None,
    age: str | None = None,
    view: str | None = None,
    pixel_data: bool = True,
    preamble: bool = True,
    sop_class: str = DX_STORAGE,
) -> Path:
    """Write `pixels` (rows x columns; frames first for multi-frame; uint8/uint16/int16) as a DICOM.

    `rescale` = (slope, intercept); `window` = (center, width); `voi_lut` = (LUT entries, first
    stored value mapped, bits per entry). `transfer_syntax`: explicit VR little endian (native),
    RLE Lossless or JPEG 2000 Lossless (pydicom / pylibjpeg-openjpeg encode them), JPEG Baseline
    (uint8: encoded by PIL and encapsulated, as the RSNA files are) or any other UID, written as
    native bytes under that UID (an unknown UID makes an undecodable file). `preamble=False`
    writes neither the 128-byte preamble nor the DICM marker.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX" if sop_class == DX_STORAGE else "CR"
    ds.BodyPartExamined = "CHEST"
    for keyword, value in (
        ("PatientID", patient_id),
        ("PatientName", patient_id),
        ("PatientSex", sex),
        ("PatientAge", age),
        ("ViewPosition", view),
    ):
        if value is not None:
            with warnings.catch_warnings():  # RSNA's ages are bare numbers, not valid AS values
                warnings.simplefilter("ignore")
                setattr(ds, keyword, value)
    _pixel_module(ds, pixels, photometric, bits_stored)
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    if voi_lut is not None:
        entries, first, bits = voi_lut
        item = Dataset()
        item.add_new("LUTDescriptor", "US", [len(entries), first, bits])
        item.add_new("LUTData", "US", list(entries))
        ds.VOILUTSequence = Sequence([item])
    if pixel_data:
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        if transfer_syntax == JPEGBaseline8Bit:
            encoded = io.BytesIO()
            Image.fromarray(pixels.astype(np.uint8)).save(encoded, format="JPEG", quality=95)
            ds.PixelData = encapsulate([encoded.getvalue()])
            ds["PixelData"].VR = "OB"
            ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        elif transfer_syntax != ExplicitVRLittleEndian:
            if _encodable(transfer_syntax):
                ds.compress(transfer_syntax, np.ascontiguousarray(pixels))
            else:  # native bytes labelled with a syntax nothing here encodes (or an unknown one)
                ds.file_meta.TransferSyntaxUID = transfer_syntax
    if not preamble:
        del ds.file_meta
        ds.save_as(path, implicit_vr=False, little_endian=True)
        return path
    known = ds.file_meta.TransferSyntaxUID.is_transfer_syntax
    options = {} if known else {"implicit_vr": False, "little_endian": True}
    ds.save_as(path, enforce_file_format=True, **options)
    return path


# --- RSNA Pneumonia Detection Challenge (Kaggle: rsna-pneumonia-detection-challenge) -------------
RSNA_CLASSES = ("Normal", "No Lung Opacity / Not Normal", "Lung Opacity")
# Images per patient (the fixture's patients share a DICOM PatientID, so that patient-wise splits
# are tested; the release itself writes each image's own patientId there).
RSNA_PATIENT_IMAGES = (1, 2, 3, 1, 4, 2, 1, 3, 2)


def _uuid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def write_rsna(root: str | Path, *, stage: int = 2, size: int = 64, seed: int = 0) -> Path:
    """A tiny RSNA copy below `root`: stage_<N>_train_labels.csv (patientId,x,y,width,height,
    Target: a row per box, one row with empty box fields per negative), stage_<N>_detailed_class_
    info.csv (patientId,class, duplicated per box), stage_<N>_train_images/<patientId>.dcm (8-bit
    MONOCHROME2 JPEG Baseline, Secondary Capture, as released), two unlabelled test images and
    the sample submission. 19 images of 9 patients; every class, 1-3 boxes per opacity."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    images = root / f"stage_{stage}_train_images"
    labels, classes = [], []
    position = 0
    for patient_number, count in enumerate(RSNA_PATIENT_IMAGES):
        patient = f"patient-{patient_number:02d}"
        for _ in range(count):
            image_id = _uuid(rng)
            name = RSNA_CLASSES[position % 3]
            boxes = 1 + (position // 3) % 3 if name == "Lung Opacity" else 0
            for _box in range(max(boxes, 1)):
                if boxes:
                    x, y = rng.integers(0, size // 2, 2)
                    w, h = rng.integers(4, size // 2, 2)
                    labels.append((image_id, float(x), float(y), float(w), float(h), 1))
                else:
                    labels.append((image_id, None, None, None, None, 0))
                classes.append((image_id, name))
            write_dicom(
                images / f"{image_id}.dcm",
                synthetic_radiograph((size, size), seed=position),
                transfer_syntax=JPEGBaseline8Bit,
                sop_class=SECONDARY_CAPTURE,
                patient_id=patient,
                sex="MF"[patient_number % 2],
                age=str(20 + 3 * position),
                view=("PA", "AP")[position % 2],
            )
            position += 1
    columns = ["patientId", "x", "y", "width", "height", "Target"]
    pd.DataFrame(labels, columns=columns).to_csv(
        root / f"stage_{stage}_train_labels.csv", index=False
    )
    pd.DataFrame(classes, columns=["patientId", "class"]).to_csv(
        root / f"stage_{stage}_detailed_class_info.csv", index=False
    )
    test_ids = [_uuid(rng) for _ in range(2)]
    for k, image_id in enumerate(test_ids):
        write_dicom(
            root / f"stage_{stage}_test_images" / f"{image_id}.dcm",
            synthetic_radiograph((size, size), seed=100 + k),
            transfer_syntax=JPEGBaseline8Bit,
            sop_class=SECONDARY_CAPTURE,
            patient_id=image_id,
            view="PA",
        )
    pd.DataFrame({"patientId": test_ids, "PredictionString": ""}).to_csv(
        root / f"stage_{stage}_sample_submission.csv", index=False
    )
    return root


# --- VinDr-CXR (PhysioNet 1.0.0; Kaggle: vinbigdata-chest-xray-abnormalities-detection) ----------
VINDR_LOCAL = (  # labels drawn as boxes (annotations_*.csv)
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Clavicle fracture",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Enlarged PA",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Lung cavity",
    "Lung cyst",
    "Mediastinal shift",
    "Nodule/Mass",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
    "Rib fracture",
    "Other lesion",
)
VINDR_GLOBAL = ("COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases")
# The Kaggle competition's 14 classes (class_id 0..13) and "No finding" (14).
VINDR_KAGGLE_CLASSES = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
    "No finding",
)
_VINDR_POOL = (
    "Cardiomegaly",
    "Pleural effusion",
    "Pneumothorax",
    "Atelectasis",
    "Consolidation",
    "Pulmonary fibrosis",
    "Pneumonia",
    "Infiltration",
    "Aortic enlargement",
    "Nodule/Mass",
    "Lung Opacity",
    "Pleural thickening",
    "Tuberculosis",
)


def _reader_sets(rng: np.random.Generator, readers: int) -> list[set[str]]:
    """Each reader's labels for one image: a shared truth read with disagreement."""
    truth = set(rng.choice(_VINDR_POOL, size=int(rng.integers(0, 4)), replace=False).tolist())
    sets = []
    for _ in range(readers):
        seen = {label for label in truth if rng.random() < 0.7}
        if rng.random() < 0.15:
            seen.add(str(rng.choice(_VINDR_POOL)))
        sets.append(seen)
    return sets


def _vindr_dicom(path: Path, k: int, size: int, patient_id: str | None) -> None:
    shape = (size, size + 16 * (k % 3))  # not all square: boxes are in each file's own pixels
    if k % 3 == 0:  # 12 bits in 16, MONOCHROME1 with a window, as many VinDr files are
        pixels = synthetic_radiograph(shape, seed=k, maximum=4095)
        write_dicom(
            path,
            pixels,
            photometric="MONOCHROME1",
            bits_stored=12,
            window=(2048, 4096),
            patient_id=patient_id,
        )
    elif k % 3 == 1:  # 14 bits, RLE compressed, no window
        pixels = synthetic_radiograph(shape, seed=k, maximum=16383)
        write_dicom(
            path,
            pixels,
            bits_stored=14,
            transfer_syntax="1.2.840.10008.1.2.5",
            patient_id=patient_id,
            view="PA",
        )
    else:
        write_dicom(path, synthetic_radiograph(shape, seed=k), patient_id=patient_id)


def _box_rows(rng, image_id: str, rad_id: str | None, labels: set[str], shape) -> list[dict]:
    local = sorted(labels & set(VINDR_LOCAL))
    rows = []
    for name in local:
        x0, y0 = rng.integers(0, shape[1] // 2), rng.integers(0, shape[0] // 2)
        x1, y1 = x0 + rng.integers(2, shape[1] // 2), y0 + rng.integers(2, shape[0] // 2)
        rows.append(
            {
                "image_id": image_id,
                "rad_id": rad_id,
                "class_name": name,
                "x_min": float(x0),
                "y_min": float(y0),
                "x_max": float(x1),
                "y_max": float(y1),
            }
        )
    if not labels:
        rows.append(
            {
                "image_id": image_id,
                "rad_id": rad_id,
                "class_name": "No finding",
                "x_min": None,
                "y_min": None,
                "x_max": None,
                "y_max": None,
            }
        )
    return rows


def write_vindr(
    root: str | Path,
    *,
    layout: str = "physionet",
    n_train: int = 14,
    n_test: int = 5,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """A tiny VinDr-CXR copy below `root`.

    physionet (1.0.0): annotations/image_labels_train.csv (image_id, rad_id, 28 labels incl.
    "Other diseases" and "No finding"; three rows per image, one per reader),
    annotations/image_labels_test.csv (one consensus row per image, no rad_id, "Other disease"),
    annotations/annotations_{train,test}.csv (image_id, rad_id, class_name, x_min, y_min, x_max,
    y_max; "No finding" rows with empty boxes), train/<image_id>.dicom, test/<image_id>.dicom.
    kaggle: train.csv (image_id, class_name, class_id, rad_id, x_min, ...; the 14 classes + "No
    finding"), train/ and test/ DICOMs, sample_submission.csv.
    Train images 0-1 and 2-3 share a PatientID; the others have none (as most VinDr headers).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    base = root / "annotations" if layout == "physionet" else root
    label_rows = {"train": [], "test": []}
    box_rows = {"train": [], "test": []}
    for split, count in (("train", n_train), ("test", n_test)):
        for k in range(count):
            image_id = rng.bytes(16).hex()
            number = k if split == "train" else 100 + k
            patient = f"VD{k // 2}" if split == "train" and k < 4 else None
            _vindr_dicom(root / split / f"{image_id}.dicom", number, size, patient)
            shape = (size, size + 16 * (number % 3))
            readers = rng.choice(17, size=3, replace=False) + 1 if split == "train" else [None]
            for rad, seen in zip(readers, _reader_sets(rng, len(readers)), strict=True):
                rad_id = f"R{rad}" if rad is not None else None
                row = {"image_id": image_id}
                if split == "train":
                    row["rad_id"] = rad_id
                for label in (*VINDR_LOCAL, *VINDR_GLOBAL):
                    name = (
                        "Other disease" if split == "test" and label == "Other diseases" else label
                    )
                    row[name] = int(label in seen)
                row["No finding"] = int(not seen)
                label_rows[split].append(row)
                box_rows[split].extend(
                    _box_rows(rng, image_id, rad_id or f"R{8 + k % 3}", seen, shape)
                )
    if layout == "physionet":
        base.mkdir(parents=True, exist_ok=True)
        for split in ("train", "test"):
            pd.DataFrame(label_rows[split]).to_csv(base / f"image_labels_{split}.csv", index=False)
            pd.DataFrame(box_rows[split]).to_csv(base / f"annotations_{split}.csv", index=False)
        return root
    if layout != "kaggle":
        raise ValueError(f"layout: {layout!r} is not physionet or kaggle")
    kaggle = pd.DataFrame(box_rows["train"])
    kaggle = kaggle[kaggle["class_name"].isin(VINDR_KAGGLE_CLASSES)]
    kaggle.insert(2, "class_id", kaggle["class_name"].map(VINDR_KAGGLE_CLASSES.index))
    kaggle = kaggle[
        ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
    ]
    kaggle.to_csv(root / "train.csv", index=False)
    test_ids = pd.DataFrame(label_rows["test"])["image_id"]
    pd.DataFrame({"image_id": test_ids, "PredictionString": "14 1 0 0 1 1"}).to_csv(
        root / "sample_submission.csv", index=False
    )
    return root
