"""The build's one addition to pyproject.toml: the pages of docs/ go into the wheel.

They land in localrun/_docs, where `localrun help TOPIC` reads them, so a user who installed
with pip has the pages that hints and errors name. An editable install reads docs/ itself.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DOCS = Path(__file__).resolve().parent / "docs"


def copy_docs(build_lib: Path) -> list[Path]:
    """Copy every page of docs/ to BUILD_LIB/localrun/_docs; the paths written."""
    written = []
    for page in sorted(DOCS.rglob("*.md")):
        target = build_lib / "localrun" / "_docs" / page.relative_to(DOCS)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(page, target)
        written.append(target)
    return written


class BuildWithDocs(build_py):
    def run(self) -> None:
        super().run()
        if not getattr(self, "editable_mode", False):
            copy_docs(Path(self.build_lib))


if __name__ == "__main__":
    setup(cmdclass={"build_py": BuildWithDocs})
