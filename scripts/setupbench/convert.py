#!/usr/bin/env python3
"""Conversion, quantization and import against llama.cpp's own tools and the disk, same files,
same run.

  convert    a synthetic BF16 Llama checkpoint (--size-gb, random weights, a SentencePiece
             tokenizer)
             to GGUF: localrun's converter (recipes.convert, what `create FROM ./folder` runs)
             against llama.cpp's convert_hf_to_gguf.py (from the llama-cpp-python sdist, run
             by --reference-python, which needs torch and transformers) and against `cp` of
             the safetensors files (the disk's speed)
  quantize   the converted GGUF to Q8_0 and Q4_K_M: localrun's quantizer (engine.library.quantize,
             what `create --quantize` runs) against llama.cpp's llama-quantize, built from the
             same vendored source (benchlib.stacks.build)
  import     an Ollama store holding that GGUF as its model blob: `localrun import ollama`
             (hash, then a hard link) against `cp` of the blob

Rounds alternate between the stacks; medians of --repeat. Files are read warm (the page cache
holds them after the first round), so the figures compare the tools, not the disk. A
benchmark, not a test: it never fails on a slow number.

Usage: .venv/bin/python scripts/setupbench/convert.py [--size-gb 1] [--repeat 3]
       [--reference-python /path/to/python-with-torch] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from benchlib.common import Unavailable, say
from benchlib.stacks import build as build_mod
from testmodels.hf_checkpoints import write_safetensors
from testmodels.hf_tokenizers import write_tokenizer

HIDDEN, FFN, HEADS, KV_HEADS = 2048, 8192, 16, 8


def write_big_checkpoint(folder: Path, size_gb: float) -> int:
    """A BF16 Llama checkpoint of about `size_gb`, one shard a layer; returns its bytes."""
    # SentencePiece's tokenizer.model: llama.cpp's converter reads it for every family (its BPE
    # path knows only the tokenizers whose hash it lists).
    written = write_tokenizer(folder, "sentencepiece")
    per_layer = 2 * (2 * HIDDEN * HIDDEN + 2 * HIDDEN * HIDDEN // 2 + 3 * HIDDEN * FFN)
    layers = max(1, round(size_gb * 1e9 / per_layer))
    config = {
        "architectures": ["LlamaForCausalLM"], "hidden_size": HIDDEN, "intermediate_size": FFN,
        "num_hidden_layers": layers, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0, "vocab_size": written.vocab_size,
        "bos_token_id": written.bos_token_id, "eos_token_id": written.eos_token_id,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)

    def mat(rows: int, cols: int) -> np.ndarray[Any, Any]:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float32)

    total = 0
    files = []
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors = {
            p + "self_attn.q_proj.weight": mat(HIDDEN, HIDDEN),
            p + "self_attn.k_proj.weight": mat(HIDDEN // 2, HIDDEN),
            p + "self_attn.v_proj.weight": mat(HIDDEN // 2, HIDDEN),
            p + "self_attn.o_proj.weight": mat(HIDDEN, HIDDEN),
            p + "mlp.gate_proj.weight": mat(FFN, HIDDEN),
            p + "mlp.up_proj.weight": mat(FFN, HIDDEN),
            p + "mlp.down_proj.weight": mat(HIDDEN, FFN),
            p + "input_layernorm.weight": np.ones(HIDDEN, np.float32),
            p + "post_attention_layernorm.weight": np.ones(HIDDEN, np.float32),
        }
        if i == 0:
            tensors["model.embed_tokens.weight"] = mat(written.vocab_size, HIDDEN)
            tensors["lm_head.weight"] = mat(written.vocab_size, HIDDEN)
            tensors["model.norm.weight"] = np.ones(HIDDEN, np.float32)
        name = f"model-{i + 1:05d}-of-{layers:05d}.safetensors"
        write_safetensors(folder / name, tensors, "BF16")
        files.append((name, list(tensors)))
        total += (folder / name).stat().st_size
    weight_map = {t: name for name, names in files for t in names}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return total


def timed(run: Callable[[], None]) -> float:
    os.sync()
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def interleave(stacks: dict[str, Callable[[], None]], repeat: int) -> dict[str, list[float]]:
    """Each stack `repeat` times, rounds alternating; a stack that fails is left out."""
    times: dict[str, list[float]] = {name: [] for name in stacks}
    failed: dict[str, str] = {}
    for round_ in range(repeat):
        for name, run in stacks.items():
            if name in failed:
                continue
            try:
                times[name].append(timed(run))
                say(f"round {round_ + 1}: {name} {times[name][-1]:.2f} s")
            except (Unavailable, subprocess.CalledProcessError, OSError) as exc:
                failed[name] = str(exc)
                say(f"{name}: not measured ({exc})")
    return {name: t for name, t in times.items() if t}


def report(title: str, size: int, times: dict[str, list[float]], base: str) -> dict[str, Any]:
    print(f"\n{title}")
    out: dict[str, Any] = {}
    reference = statistics.median(times[base]) if base in times else None
    for name, values in times.items():
        median = statistics.median(values)
        ratio = f"  {median / reference:.2f}x the time of {base}" if reference else ""
        print(f"  {name:28s} {median:7.2f} s median ({size / median / 1e9:5.2f} GB/s){ratio}")
        out[name] = {"median_s": median, "runs": values}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--reference-python",
        default=None,
        help="a Python with torch and transformers for convert_hf_to_gguf.py",
    )
    parser.add_argument("--llama-cpp-build", type=Path, default=None)
    parser.add_argument("--cache-dir", type=Path, default=build_mod.DEFAULT_CACHE)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from localrun.engine.library import quantize
    from localrun.recipes import convert

    results: dict[str, Any] = {}
    build = build_mod.ensure_build(args.llama_cpp_build, args.cache_dir, args.jobs)
    work = Path(tempfile.mkdtemp(prefix="bench-convert-", dir=args.cache_dir))
    try:
        folder = work / "checkpoint"
        say(f"writing a {args.size_gb} GB BF16 checkpoint")
        size = write_big_checkpoint(folder, args.size_gb)
        ours, theirs = work / "localrun.gguf", work / "llama.cpp.gguf"
        script = Path(build.info.get("source", "")) / "convert_hf_to_gguf.py"

        def reference() -> None:
            if not args.reference_python or not script.is_file():
                raise Unavailable("needs --reference-python with torch and transformers")
            theirs.unlink(missing_ok=True)
            env = {**os.environ, "PYTHONPATH": str(script.parent / "gguf-py")}
            subprocess.run([args.reference_python, str(script), str(folder), "--outfile",
                            str(theirs), "--outtype", "bf16"], check=True, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

        def copy() -> None:
            target = work / "copy"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(folder, target)

        def local_convert() -> None:
            ours.unlink(missing_ok=True)
            convert.checkpoint(folder, ours)

        stacks = {
            "localrun convert": local_convert,
            "convert_hf_to_gguf.py": reference,
            "cp (the disk)": copy,
        }
        results["convert"] = report(
            f"convert: a {size / 1e9:.2f} GB BF16 Llama checkpoint to GGUF", size,
            interleave(stacks, args.repeat), "convert_hf_to_gguf.py",
        )  # fmt: skip
        shutil.rmtree(work / "copy", ignore_errors=True)
        gguf_size = ours.stat().st_size
        for kind in ("q8_0", "q4_k_m"):
            out = work / f"{kind}.gguf"

            def local(kind: str = kind, out: Path = out) -> None:
                out.unlink(missing_ok=True)
                quantize.quantize(ours, out, kind)

            def tool(kind: str = kind, out: Path = out) -> None:
                out.unlink(missing_ok=True)
                command = [str(build.llama_quantize), str(ours), str(out), kind.upper()]
                subprocess.run(command, check=True, capture_output=True)

            results[f"quantize {kind}"] = report(
                f"quantize: the {gguf_size / 1e9:.2f} GB BF16 GGUF to {kind.upper()}", gguf_size,
                interleave({"localrun quantize": local, "llama-quantize": tool}, args.repeat),
                "llama-quantize",
            )  # fmt: skip
            out.unlink(missing_ok=True)
        results["import"] = report(
            f"import: an Ollama store with a {gguf_size / 1e9:.2f} GB model", gguf_size,
            interleave(_import_stacks(work, ours), args.repeat), "cp (the disk)",
        )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def _import_stacks(work: Path, model: Path) -> dict[str, Callable[[], None]]:
    """`localrun import ollama` of a store holding `model`, and cp of the model's blob."""
    import hashlib

    store = work / "ollama"
    digest = hashlib.sha256()
    with model.open("rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    blob = store / "blobs" / f"sha256-{digest.hexdigest()}"
    blob.parent.mkdir(parents=True)
    os.link(model, blob)
    manifest = store / "manifests" / "registry.ollama.ai" / "library" / "big" / "latest"
    manifest.parent.mkdir(parents=True)
    layer = {"mediaType": "application/vnd.ollama.image.model",
             "digest": f"sha256:{digest.hexdigest()}", "size": model.stat().st_size}  # fmt: skip
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [layer]}))
    home = work / "home"

    def run_import() -> None:
        shutil.rmtree(home, ignore_errors=True)
        env = {**os.environ, "OLLAMA_MODELS": str(store), "LOCALRUN_HOME": str(home)}
        subprocess.run([sys.executable, "-m", "localrun", "import", "ollama", "-q"], check=True,
                       env=env)  # fmt: skip

    def copy() -> None:
        (work / "blob-copy").unlink(missing_ok=True)
        shutil.copyfile(blob, work / "blob-copy")

    return {"localrun import ollama": run_import, "cp (the disk)": copy}


if __name__ == "__main__":
    sys.exit(main())
