#!/usr/bin/env python3
"""localrun's safetensors conversion against llama.cpp's own convert_hf_to_gguf.py, tensor by
tensor and key by key, for every architecture localrun converts.

Each family's tiny checkpoint (scripts/testmodels/hf_checkpoints.py, with a SentencePiece
tokenizer.model, which llama.cpp's converter reads for every family; its byte-level BPE path
recognizes only tokenizers whose hash it lists) is converted by both; the script prints, per
family, the tensors only one side has, the tensors whose type or bytes differ, and the header
keys that differ. llama.cpp's converter needs torch and transformers: give a Python that has
them (--reference-python); the converter itself comes from the llama-cpp-python sdist that
scripts/benchlib/stacks/build.py unpacks.

Usage: .venv/bin/python scripts/measure/convert_compare.py --reference-python /path/to/python
       [--source VENDORED_LLAMA_CPP] [FAMILY ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from benchlib.stacks import build as build_mod
from testmodels.hf_checkpoints import FAMILIES, write_checkpoint

COSMETIC = ("general.name", "general.size_label")


def compare(ours: Path, theirs: Path) -> dict[str, Any]:
    import gguf
    import numpy as np

    a, b = gguf.GGUFReader(ours), gguf.GGUFReader(theirs)
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    differing = [
        n for n in sorted(set(ta) & set(tb))
        if ta[n].tensor_type != tb[n].tensor_type
        or not np.array_equal(np.asarray(ta[n].data), np.asarray(tb[n].data))
    ]  # fmt: skip
    keys_a = {f.name: f.contents() for f in a.fields.values() if not f.name.startswith("GGUF.")}
    keys_b = {f.name: f.contents() for f in b.fields.values() if not f.name.startswith("GGUF.")}
    keys = {
        k: (keys_a.get(k), keys_b.get(k))
        for k in sorted(set(keys_a) | set(keys_b))
        if keys_a.get(k) != keys_b.get(k) and k not in COSMETIC
    }
    return {"tensors": len(ta), "one_side": sorted(set(ta) ^ set(tb)), "differing": differing,
            "keys": keys}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="*", default=sorted(FAMILIES))
    parser.add_argument("--reference-python", required=True)
    parser.add_argument("--source", type=Path, default=None)
    args = parser.parse_args()
    from localrun.recipes import convert

    source = args.source
    if source is None:
        root = build_mod.DEFAULT_CACHE / f"llama.cpp-{build_mod.LLAMA_CPP_PYTHON_VERSION}"
        root.mkdir(parents=True, exist_ok=True)
        source = build_mod._fetch_source(root)
    same = 0
    with tempfile.TemporaryDirectory(prefix="convert-compare-") as tmp:
        for family in args.families:
            folder = Path(tmp) / family
            write_checkpoint(folder, family, tokenizer="sentencepiece")
            ours, theirs = Path(tmp) / f"{family}-localrun.gguf", Path(tmp) / f"{family}-ref.gguf"
            convert.checkpoint(folder, ours)
            env = {**os.environ, "PYTHONPATH": str(source / "gguf-py")}
            command = [args.reference_python, str(source / "convert_hf_to_gguf.py"), str(folder),
                       "--outfile", str(theirs), "--outtype", "bf16"]  # fmt: skip
            ran = subprocess.run(command, env=env, capture_output=True, text=True)
            if ran.returncode:
                print(f"{family}: llama.cpp's converter failed: {ran.stderr.strip()[-300:]}")
                continue
            found = compare(ours, theirs)
            identical = not found["one_side"] and not found["differing"]
            same += identical
            verdict = (
                "all identical"
                if identical
                else (f"only one side {found['one_side']}, differing {found['differing']}")
            )
            print(f"{family}: {found['tensors']} tensors, {verdict}")
            for key, (mine, reference) in found["keys"].items():
                print(f"    key {key}: localrun {str(mine)[:60]} | llama.cpp {str(reference)[:60]}")
    print(f"{same} of {len(args.families)} families: every tensor byte-identical to llama.cpp's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
