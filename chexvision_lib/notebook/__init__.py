"""What the notebooks call beyond the pipeline: find the data, check parameters, launch training,
show a figure. Exported here, imported on first use."""

from chexvision_lib.core.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "check_parameters": "helpers",
        "find_data_root": "helpers",
        "launch_training": "helpers",
        "show": "helpers",
        "training_config": "helpers",
        "cache_size": "helpers",
        "find_run": "kaggle_session",
        "writable_run": "kaggle_session",
        "link_cache": "kaggle_session",
        "resume_from_output": "kaggle_session",
        "open_run": "kaggle_session",
    },
)
