"""The scripted test model's writer (scripts/scripted_model.py) without llama.cpp: the CLI writes a
small GGUF fast, answers too long or starting with a marker twice are refused, and template
markers are typed and cut out as llama.cpp and a converter do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from testmodels.scripted import class_codes, split_markers, template_markers, write_scripted_model

from support import PATIENCE_S, ROOT, TEMPLATES

QWEN = TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja"


CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def test_the_cli_writes_a_small_gguf_fast(tmp_path: Path) -> None:
    (tmp_path / "says.txt").write_text(CALL, encoding="utf-8")
    out = tmp_path / "call.gguf"
    command = [sys.executable, str(ROOT / "scripts" / "scripted_model.py"), "--says-file",
               str(tmp_path / "says.txt"), "--template", str(QWEN), "--special", "<|box|>",
               "-o", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=PATIENCE_S)
    assert done.returncode == 0, done.stderr
    assert str(out) in done.stdout
    assert out.read_bytes()[:4] == b"GGUF"
    assert out.stat().st_size < 6 << 20


def test_template_markers_are_typed_as_a_converter_types_them() -> None:
    markers = dict(template_markers(QWEN.read_text(encoding="utf-8")))
    assert markers["<|im_start|>"] == markers["<|im_end|>"] == 3  # CONTROL
    assert markers["<tool_call>"] == markers["</tools>"] == 4  # USER_DEFINED, as in Qwen's GGUF
    more = template_markers("{# <|final|> #}[INST]<start_of_turn><｜User｜><role><think>")
    assert more == [("[INST]", 3), ("<start_of_turn>", 3), ("<｜User｜>", 3), ("<think>", 4)]


def test_the_class_codes_keep_a_margin() -> None:
    for n in (1, 2048, 2049):
        codes = class_codes(n)
        assert codes.shape == (n, 16 if n <= 2048 else 32)
        gram = codes @ codes.T / codes.shape[1]
        np.fill_diagonal(gram, -1)
        assert len({c.tobytes() for c in codes}) == n and gram.max() <= 0.5


def test_an_answer_too_long_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bytes"):
        write_scripted_model(tmp_path / "long.gguf", "x" * (1 << 16))


def test_markers_are_cut_out_as_llama_cpp_cuts_them() -> None:
    markers = {"<tool_call>": 1, "</tool_call>": 2, "<tool": 3, "<|a|>": 4}
    assert split_markers("x<tool_call>y</tool_call><|a|><|a|>", markers) == ["x", 1, "y", 2, 4, 4]
    assert split_markers("<toolbox", markers) == [3, "box"]  # the longest marker first
    assert split_markers("", markers) == []


def test_an_answer_that_starts_with_a_marker_twice_is_refused(tmp_path: Path) -> None:
    qwen = QWEN.read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="starts with '<tool_call>' twice"):
        write_scripted_model(
            tmp_path / "twice.gguf", "<tool_call><tools><tool_call>x", template=qwen
        )
