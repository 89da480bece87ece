#!/usr/bin/env python3
"""Rebuild the chat page's vendored libraries: localrun/ui/static/vendor.js and vendor.css.

    python scripts/maintenance/build_ui.py      # needs node and npm; run it after changing
    scripts/maintenance/ui

The page (localrun/ui/static/index.html, app.js, app.css) is hand-written and served as it is;
only its libraries come from npm: marked (Markdown), DOMPurify (HTML sanitizing) and
highlight.js (code), at the versions package.json and package-lock.json pin, bundled by esbuild
into one script and one style sheet, so the page loads nothing from outside the server.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent / "ui"  # package.json, the lock, the entry points
OUT = Path(__file__).resolve().parents[2] / "localrun" / "ui" / "static"


def main() -> int:
    if shutil.which("npm") is None:
        sys.exit("build_ui: npm is not installed\n  hint: install Node.js 18 or newer")
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=SRC, check=True)
    esbuild = str(SRC / "node_modules" / ".bin" / "esbuild")
    common = ["--bundle", "--minify", "--legal-comments=eof"]
    subprocess.run([esbuild, "vendor.js", *common, "--format=iife",
                    f"--outfile={OUT / 'vendor.js'}"], cwd=SRC, check=True)  # fmt: skip
    subprocess.run([esbuild, "vendor.css", *common, f"--outfile={OUT / 'vendor.css'}"],
                   cwd=SRC, check=True)  # fmt: skip
    for name in ("vendor.js", "vendor.css"):
        print(f"build_ui: {OUT / name} ({(OUT / name).stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
