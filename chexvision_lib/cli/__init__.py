"""The `chexvision` command line: one module per command group, each a thin shell over the library.

Parsers import nothing heavy; a command's libraries (torch, pandas, Gradio) are imported only when
that command runs, so `chexvision --help` is instant.
"""
