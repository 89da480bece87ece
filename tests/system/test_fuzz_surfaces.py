"""The second audit's surfaces under scripts/fuzz/tokens_gateway_cache.py, at a small scale:
tokenizing (megabytes of CJK text, thousands of special tokens, million-token lists) with a generate
beside it, upstreams that send an endless line, a gzip bomb, a 96 MB embedding or a 16 MB
model list, and prompt cache entries replaced by FIFOs, links, sparse and damaged files.

The real `localrun serve` and `localrun run` run the tiny model (trained, so its header says, on
2**24 tokens); every answer must be a 2xx or a 4xx in its dialect's shape (502/504 for an
upstream's failure), the server must stay up and its event loop free.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzz import tokens_gateway_cache as fuzz_surfaces

from support import ROOT

pytestmark = [pytest.mark.server, pytest.mark.slow]


def test_the_surfaces_hold(
    tiny_long_model: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # `python -m localrun` from here
    code = fuzz_surfaces.main(
        ["--from", str(tiny_long_model), "--cases", "16", "--scale", "0.25", "--seed", "3"]
    )
    out = capsys.readouterr().out
    assert code == 0, out[-4000:]
    summary = out.strip().splitlines()[-1]
    assert "0 defects; server up afterwards: True" in summary, summary
    assert " 400: " in summary and " 200: " in summary  # bounds refused, the rest answered
