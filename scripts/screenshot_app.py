"""Screenshot the demo page after a prediction, driven in headless Chromium as a person would.

    .venv/bin/python scripts/screenshot_app.py MODEL OUT.png [--example 2 | --upload IMAGE]
        [--cam-output Mass] [--chromium /usr/bin/chromium]

Serves `chexvision app MODEL` in this process on a free loopback port, opens it in the system's
Chromium through Playwright (`pip install playwright`; nothing is downloaded: it drives the
Chromium at --chromium), clicks an example film (or uploads IMAGE through the file input), picks
the Grad-CAM output in the dropdown, waits until the page shows that output's overlay and saves a
full-page screenshot. Research and teaching use only.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

from chexvision_lib.serving.app import launch, synthetic_examples

# What headless Chromium needs on these machines: no sandbox as root, no GPU, and none of the
# background connections that a closed network refuses (they slow every start).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 1000}
PAGE_TIMEOUT_MS = 60_000


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cam_image_source(page) -> str | None:
    image = page.locator("#cam-overlay img")
    return image.first.get_attribute("src") if image.count() else None


def wait_for_new_overlay(page, previous: str | None) -> None:
    """Until the Grad-CAM image exists and differs from `previous` (each answer is a new file)."""
    page.wait_for_function(
        """previous => {
            const image = document.querySelector('#cam-overlay img');
            return image !== null && image.complete && image.naturalWidth > 0
                && image.getAttribute('src') !== previous;
        }""",
        arg=previous,
        timeout=PAGE_TIMEOUT_MS,
    )


def choose_cam_output(page, output: str) -> None:
    """Open the Grad-CAM dropdown and click the option, as a mouse would."""
    page.locator("#cam-output input").click()
    page.get_by_role("option", name=output, exact=True).click()


def screenshot_after_prediction(
    url: str, out: Path, chromium: str, example_label: str | None, upload: Path | None, cam: str
) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True, chromium_sandbox=False, args=CHROMIUM_FLAGS
        )
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(url, wait_until="load", timeout=PAGE_TIMEOUT_MS)
            page.wait_for_selector("#upload", timeout=PAGE_TIMEOUT_MS)
            if upload is not None:
                page.locator("#upload input[type=file]").set_input_files(str(upload))
            else:
                page.get_by_text(example_label, exact=True).click()
            wait_for_new_overlay(page, None)
            first_overlay = cam_image_source(page)
            choose_cam_output(page, cam)
            wait_for_new_overlay(page, first_overlay)
            page.wait_for_timeout(500)  # let the chart and table finish painting
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="run folder, model folder or Hub repo id")
    parser.add_argument("out", type=Path, help="PNG file to write")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--example", type=int, default=2, help="example film to click (1-based)")
    source.add_argument("--upload", type=Path, help="an image file to upload instead")
    parser.add_argument("--cam-output", default="Mass", help="output to pick for Grad-CAM")
    parser.add_argument("--revision", help="Hub revision when MODEL is a repo id")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args(argv)

    examples = synthetic_examples()
    if args.upload is None and not 1 <= args.example <= len(examples):
        parser.error(f"--example must be 1..{len(examples)}")
    label = None if args.upload is not None else examples[args.example - 1].label
    app = launch(
        args.model, args.revision, "127.0.0.1", free_loopback_port(), prevent_thread_lock=True
    )
    started = time.perf_counter()
    try:
        screenshot_after_prediction(
            app.local_url, args.out, args.chromium, label, args.upload, args.cam_output
        )
    finally:
        app.close()
    shown = args.upload or label
    print(
        f"{args.out}: page after analysing {shown!r} with Grad-CAM for {args.cam_output} "
        f"({time.perf_counter() - started:.1f} s in the browser)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
