"""CheXVision: chest X-ray classifiers on NIH ChestX-ray14 — data, models, training, evaluation.

A research and teaching tool. Not a medical device; not for clinical use.

The names below are the public API, imported on first use (so `import chexvision_lib` stays cheap):

    prepare(root, out, size=256)            index a dataset and decode it once into a cache
    TrainConfig(cache=..., out=...), fit()  train a run folder
    evaluate_run(run, "test")               predictions.csv + metrics.json with patient CIs
    build_model("timm/convnext_tiny")       any built-in or timm architecture on our heads
    load_model(folder_or_repo)              a saved model, never unpickled
    predict_images(model, paths)            probabilities for image files
    build_model_folder(run, out)            weights + metrics + model card, ready to push
    push_model_folder(folder, repo_id)      one commit to the Hugging Face Hub
"""

from chexvision_lib.core.lazy import lazy_exports

__version__ = "0.1.0"

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "DISCLAIMER": "core.disclaimer",
        "OUTPUTS": "core.labels",
        "FINDINGS": "core.labels",
        "write_synthetic_nih": "data.synthetic",
        "prepare": "data.prepare",
        "CachedSplit": "data.batches",
        "MODEL_NAMES": "models.registry",
        "check_model_name": "models.registry",
        "is_model_name": "models.registry",
        "build_model": "models.registry",
        "ChestClassifier": "models.registry",
        "load_model": "models.loading",
        "predict_images": "models.predict",
        "TrainConfig": "training.config",
        "fit": "training.loop",
        "evaluate_run": "evaluation.evaluate",
        "build_model_folder": "publishing.model_folder",
        "push_model_folder": "publishing.hub",
    },
)
