"""`chexvision app`: a web page that scores one chest radiograph with a model folder.

    build_app(model)                         -> gradio.Blocks holding the (already loaded) model
    launch(model_ref, revision, host, port)  load a model / run folder or Hub repo once, then serve

The page decodes an upload with `image_io.load_grey` and scores it with `predict.predict_arrays`,
the pixels and the code of `chexvision predict`: the page and the command give the same
probabilities for the same file. It shows the abnormal probability against the model's stored
threshold, the 14 finding probabilities (table and bar chart, thresholds marked), the pixels the
model saw and a CAM overlay for an output and a method (Grad-CAM by default; the pytorch-grad-cam
methods of `cam_methods`) the user picks. Example films are drawn by the
synthetic generator at first use (cached on disk), so nothing binary lives in git.

Gradio is optional (requirements.txt has it, the package does not require it): it is imported only
when a page is built or served.
Research and teaching use only: not a medical device, not for clinical use.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from chexvision_lib.core.disclaimer import DISCLAIMER
from chexvision_lib.core.labels import ABNORMAL, FINDINGS, NO_FINDING, OUTPUTS
from chexvision_lib.core.predictions import prob_column
from chexvision_lib.data.image_io import MAX_PIXELS, MIN_SIDE, ImageDecodeError, load_grey
from chexvision_lib.explain.cam_methods import (
    CAM_METHODS,
    DEFAULT_CAM_METHOD,
    cam_method,
    display_name,
)
from chexvision_lib.explain.gradcam import grad_cam, normalised_inputs, overlay
from chexvision_lib.models.predict import predict_arrays
from chexvision_lib.models.registry import ChestClassifier
from chexvision_lib.serving.settings import DEFAULT_HOST, DEFAULT_PORT, GRADIO_VERSION

if TYPE_CHECKING:
    import gradio as gr

logger = logging.getLogger(__name__)

# The Gradio release this page was built and tested with; `chexvision space` pins Spaces to it.
# Gradio refuses larger uploads before our code reads them. A 1024 px NIH PNG is 0.5-3 MB; a
# 16-bit export of a 3000 px film is ~18 MB.
MAX_UPLOAD = "64mb"
API_NAME = "analyse"  # the endpoint gradio_client calls: client.predict(..., api_name="/analyse")

# Example films: a small synthetic set, drawn once into the cache. Seed 2024, not the demo's 0,
# so they are films no `chexvision demo` model was trained on.
EXAMPLES_SEED = 2024
EXAMPLES_PATIENTS = 8  # write_synthetic_nih's minimum; ~24 films, about a second to draw
EXAMPLES_IMAGE_SIZE = 256
EXAMPLES_COUNT = 4  # one film with no finding, then the films with the most findings
EXAMPLES_VERSION = 1  # bump when the selection changes, so old caches are drawn anew
EXAMPLES_MANIFEST = "examples.json"

ABOVE_COLOUR = "#d9480f"  # orange-red: at or above the model's threshold
BELOW_COLOUR = "#4c6ef5"  # blue: below it
NO_THRESHOLD_COLOUR = "#adb5bd"  # grey: the model stores no threshold for this output
IMAGE_HEIGHT = 320  # px on the page: small model inputs (128 px) are shown enlarged
PROMPT = "Upload a chest radiograph (PNG or JPEG, any size or mode) or pick an example."


def _gradio() -> Any:
    """The gradio module, or an ImportError that says how to install it."""
    try:
        import gradio
    except ImportError:
        raise ImportError(
            f"the demo app needs Gradio: pip install 'gradio=={GRADIO_VERSION}'"
        ) from None
    return gradio


# --------------------------------------------------------------------------------------------
# Scoring one image.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Analysis:
    """One scored image: everything the page shows about it."""

    image_name: str
    pixels: np.ndarray  # (S, S) uint8: exactly what the model saw
    probabilities: np.ndarray  # (15,) in labels.OUTPUTS order; NaN findings for a binary head
    cam_output: str
    cam_overlay: np.ndarray  # (S, S, 3) uint8: the CAM of `cam_output` over `pixels`
    seconds: float  # decode + model + CAM
    cam_method: str = DEFAULT_CAM_METHOD  # a cam_methods name


class ImageScorer:
    """A loaded model, scoring one image at a time.

    Gradio runs handlers in worker threads; the lock keeps two requests from interleaving inside
    the model (a CAM registers hooks on it, and predict converts it to channels_last).
    """

    def __init__(self, model: ChestClassifier) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.image_size = int(model.preprocessing["image_size"])
        self._lock = threading.Lock()

    def analyse(
        self, data: bytes, name: str, cam_output: str, method: str = DEFAULT_CAM_METHOD
    ) -> Analysis:
        """Decode, score and explain an image file's bytes with the CAM `method` (a
        cam_methods name); ImageDecodeError for non-images."""
        if cam_output not in self.model.output_names:
            raise ValueError(
                f"CAM output {cam_output!r} is not an output of this model; "
                f"expected one of {', '.join(self.model.output_names)}"
            )
        cam_method(method)  # ValueError naming the methods offered
        started = time.perf_counter()
        # A writable copy: PIL's array is read-only, and torch.from_numpy warns on those.
        pixels = load_grey(data, self.image_size, name=name).copy()
        with self._lock:
            probabilities = predict_arrays(self.model, pixels[None])[0]
            heat = self._cam_map(pixels, cam_output, method)
        return Analysis(
            image_name=name,
            pixels=pixels,
            probabilities=probabilities,
            cam_output=cam_output,
            cam_overlay=overlay(pixels, heat),
            seconds=time.perf_counter() - started,
            cam_method=method,
        )

    def _cam_map(self, pixels: np.ndarray, output: str, method: str) -> np.ndarray:
        x = normalised_inputs(pixels[None], self.model.preprocessing, self.device)
        # OUTPUTS indices work for both heads: grad_cam maps "Abnormal" (14) to a binary head's 0.
        return grad_cam(self.model, x, OUTPUTS.index(output), method=method).maps[0]


def stored_thresholds(model: ChestClassifier) -> dict[str, float | None]:
    """The model's decision thresholds by output name (None where none was stored)."""
    values = model.thresholds or [None] * len(OUTPUTS)
    return {
        name: (None if v is None else float(v)) for name, v in zip(OUTPUTS, values, strict=True)
    }


def is_flagged(probability: float, threshold: float | None) -> bool:
    """At or above the threshold; 0.5 where none is stored, as `predict_images` decides."""
    return bool(probability >= (0.5 if threshold is None else threshold))


# --------------------------------------------------------------------------------------------
# What the page shows: pure functions of an Analysis (or its probabilities) and the thresholds.
# --------------------------------------------------------------------------------------------
def prediction_record(analysis: Analysis, thresholds: dict[str, float | None]) -> dict[str, Any]:
    """The numbers as JSON, with `chexvision predict --json`'s names (prob_<output>) at full
    precision: the page's table rounds, this does not."""
    probabilities = {
        prob_column(name): None if np.isnan(p) else float(p)
        for name, p in zip(OUTPUTS, analysis.probabilities, strict=True)
    }
    abnormal = float(analysis.probabilities[OUTPUTS.index(ABNORMAL)])
    return {
        "image": analysis.image_name,
        **probabilities,
        "abnormal_threshold": thresholds[ABNORMAL],
        "abnormal": is_flagged(abnormal, thresholds[ABNORMAL]),
        "thresholds": thresholds,
        "disclaimer": DISCLAIMER,
    }


def _sorted_findings(
    probabilities: np.ndarray, thresholds: dict[str, float | None]
) -> list[tuple[str, float, float | None]]:
    """(finding, probability, threshold), most probable first; empty for a binary head."""
    rows = [
        (name, float(p), thresholds[name])
        for name, p in zip(FINDINGS, probabilities[: len(FINDINGS)], strict=True)
        if not np.isnan(p)
    ]
    return sorted(rows, key=lambda row: -row[1])


TABLE_COLUMNS: tuple[str, ...] = ("Finding", "Probability", "Threshold", "At or above threshold")


def empty_findings_table() -> pd.DataFrame:
    return pd.DataFrame(columns=list(TABLE_COLUMNS))


def findings_table(probabilities: np.ndarray, thresholds: dict[str, float | None]) -> pd.DataFrame:
    """The 14 findings, most probable first, with threshold and whether it is reached."""
    rows = [
        {
            "Finding": name,
            "Probability": f"{p:.3f}",
            "Threshold": "—" if t is None else f"{t:.3f}",
            "At or above threshold": "—" if t is None else ("yes" if p >= t else "no"),
        }
        for name, p, t in _sorted_findings(probabilities, thresholds)
    ]
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def probability_chart(
    probabilities: np.ndarray, thresholds: dict[str, float | None]
) -> np.ndarray | None:
    """Horizontal bars of the finding probabilities, a black tick at each stored threshold.

    Returns an RGB uint8 image, or None for a binary-head model (no findings to draw).
    """
    # Imported here, and drawn on a Figure without pyplot: pyplot's global state is not safe
    # across Gradio's worker threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = _sorted_findings(probabilities, thresholds)
    if not rows:
        return None
    figure = Figure(figsize=(6.4, 4.6), dpi=100)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = np.arange(len(rows))[::-1]  # most probable at the top
    colours = [
        NO_THRESHOLD_COLOUR if t is None else (ABOVE_COLOUR if p >= t else BELOW_COLOUR)
        for _, p, t in rows
    ]
    axes.barh(positions, [p for _, p, _ in rows], height=0.7, color=colours)
    for position, (_, _, threshold) in zip(positions, rows, strict=True):
        if threshold is not None:
            axes.vlines(threshold, position - 0.45, position + 0.45, colors="black", linewidth=2)
    axes.set_yticks(positions, [name for name, _, _ in rows])
    axes.set_xlim(0.0, 1.0)
    axes.set_xlabel("probability")
    axes.set_title("Finding probabilities (ticks: the model's thresholds)", fontsize=10)
    axes.grid(axis="x", alpha=0.3)
    legend = [
        Patch(color=ABOVE_COLOUR, label="at or above threshold"),
        Patch(color=BELOW_COLOUR, label="below threshold"),
        Line2D([], [], color="black", linewidth=2, label="threshold"),
    ]
    if any(t is None for _, _, t in rows):
        legend.append(Patch(color=NO_THRESHOLD_COLOUR, label="no stored threshold"))
    axes.legend(handles=legend, loc="lower right", fontsize=8)
    figure.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def abnormal_summary_html(probability: float, threshold: float | None) -> str:
    """The headline: abnormal probability, the stored threshold, and which side of it we are."""
    flagged = is_flagged(probability, threshold)
    colour = ABOVE_COLOUR if flagged else BELOW_COLOUR
    side = "at or above" if flagged else "below"
    if threshold is None:
        rule = f"No threshold is stored with this model; at 0.5 (as <code>chexvision predict</code>) it is <b>{side}</b>."  # noqa: E501
    else:
        verdict = "the model flags this film as abnormal" if flagged else "not flagged"
        rule = (
            f"The model's threshold is <b>{threshold:.3f}</b> (chosen on validation data): "
            f"<b>{side}</b> it, so {verdict}."
        )
    return (
        f'<div style="border-left:6px solid {colour};padding:8px 14px;">'
        f'<div style="font-size:0.95em;">Abnormal (any of the 14 findings): probability</div>'
        f'<div style="font-size:2.2em;font-weight:700;color:{colour};">{probability:.3f}</div>'
        f"<div>{rule}</div>"
        '<div style="font-size:0.85em;opacity:0.8;">A model output, not a diagnosis.</div>'
        "</div>"
    )


def disclaimer_html() -> str:
    return (
        '<div style="border:2px solid #b45309;background:#fff7e6;color:#7c2d12;'
        'padding:10px 14px;border-radius:8px;font-size:1.02em;">'
        f"<b>⚠ {html.escape(DISCLAIMER)}</b> Predictions can be wrong; they come from a model "
        "trained on NIH ChestX-ray14 (or synthetic) images, whose labels are themselves noisy. "
        "Do not upload images that identify a person.</div>"
    )


def model_description(model: ChestClassifier, source: str | None) -> str:
    spec = model.preprocessing
    stored = sum(t is not None for t in stored_thresholds(model).values())
    where = f" · from `{source}`" if source else ""
    return (
        f"**Model:** `{model.arch}`, {model.head} head, {spec['image_size']}×{spec['image_size']}"
        f" px grey input{where} · {stored} of {len(OUTPUTS)} thresholds stored in its config.json."
        " Images are decoded and resized exactly as `chexvision predict` does."
    )


# --------------------------------------------------------------------------------------------
# Example films.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExampleImage:
    path: Path
    label: str  # what the page shows: the film's synthetic ground truth


def default_cache_dir() -> Path:
    """$CHEXVISION_CACHE, else $XDG_CACHE_HOME/chexvision, else ~/.cache/chexvision."""
    if os.environ.get("CHEXVISION_CACHE"):
        return Path(os.environ["CHEXVISION_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "chexvision"


def synthetic_examples(cache_dir: str | Path | None = None) -> list[ExampleImage]:
    """A few synthetic films with their labels, drawn into `cache_dir` the first time."""
    folder = Path(cache_dir or default_cache_dir()) / f"app-examples-v{EXAMPLES_VERSION}"
    if not (folder / EXAMPLES_MANIFEST).is_file():
        _draw_examples(folder)
    entries = json.loads((folder / EXAMPLES_MANIFEST).read_text())["examples"]
    return [ExampleImage(folder / entry["file"], entry["label"]) for entry in entries]


def pick_example_films(entries: pd.DataFrame, count: int = EXAMPLES_COUNT) -> pd.DataFrame:
    """One film with no finding, then the films with the most findings (file order breaks ties):
    a handful of examples then shows many outputs firing."""
    labels = entries["Finding Labels"]
    normal = entries[labels == NO_FINDING].head(1)
    abnormal = entries[labels != NO_FINDING]
    most_findings = (
        abnormal["Finding Labels"].str.count(r"\|").sort_values(ascending=False, kind="stable")
    )
    return pd.concat([normal, abnormal.loc[most_findings.index[: count - len(normal)]]])


def _draw_examples(folder: Path) -> None:
    """Draw the synthetic set in a staging folder beside `folder`, keep the picked films, then
    rename into place: a concurrent start never sees a half-written folder."""
    from chexvision_lib.data.synthetic import write_synthetic_nih

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".app-examples-", dir=folder.parent))
    try:
        data = staging / "synthetic"
        write_synthetic_nih(
            data, n_patients=EXAMPLES_PATIENTS, image_size=EXAMPLES_IMAGE_SIZE, seed=EXAMPLES_SEED
        )
        entries = pd.read_csv(
            data / "Data_Entry_2017.csv", usecols=["Image Index", "Finding Labels"]
        )
        kept = staging / "examples"
        kept.mkdir()
        manifest = []
        for number, row in enumerate(pick_example_films(entries).itertuples(index=False), 1):
            image_id, finding_labels = row[0], row[1]
            name = f"synthetic_{number}_{image_id}"
            shutil.copyfile(next(data.glob(f"images_*/images/{image_id}")), kept / name)
            truth = finding_labels.replace("|", ", ")
            manifest.append({"file": name, "label": f"Synthetic film {number} — truth: {truth}"})
        info = {"seed": EXAMPLES_SEED, "image_size": EXAMPLES_IMAGE_SIZE, "examples": manifest}
        (kept / EXAMPLES_MANIFEST).write_text(json.dumps(info, indent=2))
        try:
            kept.rename(folder)
        except OSError:  # another process finished first: use its copy
            if not (folder / EXAMPLES_MANIFEST).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# The page.
# --------------------------------------------------------------------------------------------
def build_app(
    model: ChestClassifier,
    *,
    source: str | None = None,
    examples: list[ExampleImage] | None = None,
    examples_dir: str | Path | None = None,
) -> gr.Blocks:
    """The demo page for a loaded model (kept for the page's life: load it once).

    `source` names where the model came from (shown on the page). `examples`: films to offer;
    by default the synthetic films of `synthetic_examples(examples_dir)`.
    """
    gr = _gradio()
    scorer = ImageScorer(model)
    thresholds = stored_thresholds(model)
    if examples is None:
        examples = synthetic_examples(examples_dir)

    def empty_outputs(message: str) -> tuple[Any, ...]:
        return (message, "", None, None, None, empty_findings_table(), {})

    def analyse(
        file_path: str | None, cam_output: str, method: str = DEFAULT_CAM_METHOD
    ) -> tuple[Any, ...]:
        if not file_path:
            return empty_outputs(PROMPT)
        name = Path(file_path).name
        try:
            analysis = scorer.analyse(Path(file_path).read_bytes(), name, cam_output, method)
        except ImageDecodeError as error:
            return _refused(gr, empty_outputs, _without_object_repr(str(error)))
        except Exception:  # the page shows a message, never a traceback; the log keeps it
            logger.exception("could not analyse %s", file_path)
            return _refused(
                gr, empty_outputs, f"{name}: could not be analysed (internal error; see log)"
            )
        abnormal = float(analysis.probabilities[OUTPUTS.index(ABNORMAL)])
        shown = display_name(analysis.cam_method)
        status = (
            f"Scored **{html.escape(name)}** in {analysis.seconds:.2f} s "
            f"(decode, model and {shown} on {scorer.device.type.upper()}). "
            f"{shown} shows **{analysis.cam_output}**."
        )
        if not cam_method(analysis.cam_method).uses_target:
            status += f" ({shown} is class-agnostic: the same map for every output.)"
        return (
            status,
            abnormal_summary_html(abnormal, thresholds[ABNORMAL]),
            analysis.pixels,
            analysis.cam_overlay,
            probability_chart(analysis.probabilities, thresholds),
            findings_table(analysis.probabilities, thresholds),
            prediction_record(analysis, thresholds),
        )

    with gr.Blocks(title="CheXVision demo", analytics_enabled=False) as app:
        gr.Markdown("# CheXVision — chest X-ray classifier demo")
        gr.HTML(disclaimer_html(), elem_id="disclaimer")
        gr.Markdown(model_description(model, source))
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                upload = gr.File(
                    label="Radiograph (PNG or JPEG)",
                    file_types=["image"],
                    type="filepath",
                    elem_id="upload",
                )
                cam_output = gr.Dropdown(
                    choices=list(model.output_names),
                    value=ABNORMAL,
                    label="CAM for",
                    info="Which output's evidence to draw (an evidence map, not a segmentation)",
                    elem_id="cam-output",
                )
                method = gr.Dropdown(
                    choices=[(display_name(name), name) for name in CAM_METHODS],
                    value=DEFAULT_CAM_METHOD,
                    label="CAM method",
                    info="pytorch-grad-cam's methods; Score-CAM runs one forward pass per "
                    "feature channel (slow on a CPU)",
                    elem_id="cam-method",
                )
                run = gr.Button("Analyse", variant="primary", elem_id="analyse")
                status = gr.Markdown(PROMPT, elem_id="status")
                gr.Examples(
                    examples=[[str(example.path)] for example in examples],
                    inputs=[upload],
                    example_labels=[example.label for example in examples],
                    label="Synthetic examples (drawn by the generator; not real radiographs)",
                )
            with gr.Column(scale=2):
                summary = gr.HTML(elem_id="abnormal-summary")
                with gr.Row():
                    model_input = _picture(
                        gr, "What the model sees (decoded, grey, resized)", "model-input"
                    )
                    # A fixed label: a changing one would make the API answer an update dict
                    # instead of the image. The status line names the output.
                    cam_image = _picture(gr, "CAM for the chosen output", "cam-overlay")
                chart = _picture(gr, "Finding probabilities", "chart", height=None)
                table = gr.Dataframe(
                    value=empty_findings_table(),
                    label="Findings, most probable first",
                    interactive=False,
                    elem_id="findings-table",
                )
                with gr.Accordion("Raw numbers (JSON, as `chexvision predict --json`)", open=False):
                    record = gr.JSON(elem_id="record")
        gr.on(
            triggers=[upload.change, cam_output.change, method.change, run.click],
            fn=analyse,
            inputs=[upload, cam_output, method],
            outputs=[status, summary, model_input, cam_image, chart, table, record],
            api_name=API_NAME,
        )
    return app


def _picture(gr: Any, label: str, elem_id: str, height: int | None = IMAGE_HEIGHT) -> Any:
    """A read-only image output, sent as PNG: lossless, so the page shows the model's pixels."""
    return gr.Image(
        label=label,
        type="numpy",
        format="png",
        interactive=False,
        height=height,
        elem_id=elem_id,
    )


def _refused(gr: Any, empty_outputs: Any, message: str) -> tuple[Any, ...]:
    """Outputs for a file we cannot score: the reason in the status line and as a toast."""
    accepted = (
        f"Accepted: PNG or JPEG images from {MIN_SIDE}×{MIN_SIDE} up to {MAX_PIXELS:,} pixels."
    )
    gr.Warning(html.escape(message))
    return empty_outputs(f"**Could not use this file.** {html.escape(message)}. {accepted}")


def _without_object_repr(message: str) -> str:
    """Drop the "<_io.BytesIO object at 0x...>" that PIL puts in its message for bytes input:
    noise to a reader, and different at every request."""
    return re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", message)


# Gradio shows an image at its own size: a 128 px model input would be a thumbnail. Fill the
# frame instead; the model's pixels are drawn as blocks (pixelated), not smoothed, so the page
# shows their true resolution. The API still returns the images at the model's size.
PAGE_CSS = """
#model-input img, #cam-overlay img { width: 100%; height: 100%; object-fit: contain; }
#model-input img { image-rendering: pixelated; }
"""


def launch_options() -> dict[str, Any]:
    """Options for `Blocks.launch` shared by `launch` and a Space's app.py."""
    return {
        "css": PAGE_CSS,
        "max_file_size": MAX_UPLOAD,
        "show_error": False,  # handlers report their own errors; never send tracebacks
        "ssr_mode": False,  # client-side rendering: no Node.js server needed
    }


def launch(
    model_ref: str | Path,
    revision: str | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    prevent_thread_lock: bool = False,
    examples_dir: str | Path | None = None,
) -> gr.Blocks:
    """Load a model folder, run folder or Hub repo id on the CPU, then serve the page.

    Blocks until interrupted, unless `prevent_thread_lock` (then the server runs in a thread:
    `app.local_url` is its address and `app.close()` stops it).
    """
    from chexvision_lib.models.loading import load_model

    _gradio()  # fail on a missing Gradio before spending time loading the model
    model = load_model(model_ref, device="cpu", revision=revision)
    source = f"{model_ref} @ {revision}" if revision else str(model_ref)
    app = build_app(model, source=source, examples_dir=examples_dir)
    app.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=prevent_thread_lock,
        **launch_options(),
    )
    return app
