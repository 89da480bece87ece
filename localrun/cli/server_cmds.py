"""`localrun ps` and `localrun stop`: the running server's loaded models (see localrun.client)."""

from __future__ import annotations

from localrun.cli.main import app  # noqa: F401
