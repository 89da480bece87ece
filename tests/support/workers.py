"""What a test runs in a child process of its own. A child started by spawn imports its target
by module name, which a test module (imported by path) has not got: the targets live here."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

from localrun.recipes import create, modelfile
from localrun.store import names
from localrun.store.local import Store


def create_model(root: str, model: str, path: str, barrier: Any) -> None:
    """`create` of `model` from the GGUF at `path` into the store at `root`, once every child
    has reached the barrier (the concurrent creates of tests/integration/store/test_store.py)."""
    try:
        store = Store(Path(root))
        barrier.wait(60)
        create.create(store, names.parse(model), modelfile.parse(f"FROM {path}"), Path(path).parent)
    except BaseException:
        traceback.print_exc()
        raise SystemExit(1) from None
