"""Render a report in headless Chromium: screenshot it, check that the verdict and the plots are on the page.

    python tests/report_screenshot.py reports/rank/report.html [--png reports/rank/screenshot.png]

Needs Debian's `chromium` (apt-get install -y chromium; tests/test_report.py installs it when it can). The
page must render offline with no JavaScript: Chromium runs with networking and background services off.
Exit 0 when every check passes, 1 otherwise (the checks are printed as JSON).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
WINDOW = (1400, 3000)
# Plot colours (matplotlib tab10 blue and orange): seeing them in the screenshot means a plot was drawn.
PLOT_COLOURS = ((31, 119, 180), (255, 127, 14))


def find_chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def _chromium(
    html_path: Path, *mode: str, profile: Path, timeout_s: int = 120
) -> subprocess.CompletedProcess:
    command = [
        find_chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-extensions",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        *mode,
        html_path.resolve().as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=True)


def check_report(html_path: Path, png_path: Path) -> dict:
    """Screenshot `html_path` into `png_path`; return what was checked on the DOM and in the pixels."""
    html_path, png_path = Path(html_path), Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        _chromium(html_path, f"--screenshot={png_path.resolve()}", profile=Path(profile))
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        dom = _chromium(html_path, "--dump-dom", profile=Path(profile)).stdout

    from matplotlib.image import imread

    pixels = (imread(png_path)[..., :3] * 255).round().astype(np.int16)
    not_white = np.any(pixels < 245, axis=-1)
    plot_pixels = sum(
        int(np.count_nonzero(np.all(np.abs(pixels - np.array(c)) <= 6, axis=-1))) for c in PLOT_COLOURS
    )
    return {
        "screenshot": str(png_path),
        "size": [int(pixels.shape[1]), int(pixels.shape[0])],
        "verdict_on_page": bool(re.search(r'<p class="verdict (ok|warn)">Best on the selection split: trial ', dom)),
        "sections_on_page": re.findall(r"<h2[^>]*>([^<]+)</h2>", dom),
        "images_on_page": dom.count('<img src="data:image/png;base64,'),
        "script_tags": dom.lower().count("<script"),
        "non_white_fraction": round(float(not_white.mean()), 4),
        "plot_colour_pixels": plot_pixels,
        "screenshot_not_blank": bool(not_white.mean() > 0.02 and plot_pixels > 500),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="report.html")
    parser.add_argument("--png", type=Path, default=None, help="screenshot path (default: beside the report)")
    args = parser.parse_args(argv)
    if find_chromium() is None:
        print("chromium not found: apt-get install -y chromium", file=sys.stderr)
        return 1
    checks = check_report(args.report, args.png or args.report.with_name("screenshot.png"))
    print(json.dumps(checks, indent=2))
    passed = (
        checks["verdict_on_page"]
        and checks["images_on_page"] >= 1
        and checks["script_tags"] == 0
        and checks["screenshot_not_blank"]
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
