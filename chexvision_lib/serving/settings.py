"""Defaults shared by the app, the Space folder and their commands (no Gradio, no torch)."""

GRADIO_VERSION = "6.31.0"  # the Gradio the app is tested with; a Space pins it
DEFAULT_HOST = "127.0.0.1"  # this machine only: serving to a network is an explicit --host
DEFAULT_PORT = 7860
DEFAULT_TITLE = "CheXVision demo"
