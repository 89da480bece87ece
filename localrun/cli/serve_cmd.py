"""`localrun serve`: the HTTP API on uvicorn (see localrun.server)."""

from __future__ import annotations

from localrun.cli.main import app  # noqa: F401
