"""Serving: the Gradio page that scores one radiograph, and the Hugging Face Space folder around it.

The names a Space's app.py needs are exported here, imported on first use.
"""

from chexvision_lib.core.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "build_app": "app",
        "launch": "app",
        "launch_options": "app",
        "load_pinned_model": "space",
        "write_space_folder": "space",
    },
)
