"""Write tiny GGUF fixtures for localrun's tests.

The writers live in the ``testmodels`` package (scripts/testmodels/): the tiny llama model and
its LoRA (``testmodels.text``), the malformed samples (``testmodels.malformed``), the multimodal
models (``testmodels.projectors``) and the reranker (``testmodels.reranker``). Run this script to
write them all::

    python scripts/make_test_models.py OUT_DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

from testmodels.malformed import write_malformed
from testmodels.projectors import write_tiny_audio, write_tiny_vision
from testmodels.reranker import write_tiny_reranker
from testmodels.text import DEFAULT_PARAMS, write_tiny_lora, write_tiny_model


def main(argv: list[str] | None = None) -> int:
    """Write the tiny model, its LoRA, the malformed samples, the multimodal models and the
    reranker into an output directory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="directory to write the GGUF files into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model weights")
    parser.add_argument("--f16", action="store_true", help="write f16 instead of f32 weights")
    parser.add_argument(
        "--extra-bytes", type=int, default=0, help="also write tiny-llama-big.gguf this much larger"
    )
    args = parser.parse_args(argv)
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    dtype: Literal["f32", "f16"] = "f16" if args.f16 else "f32"
    written = [
        write_tiny_model(out / "tiny-llama.gguf", seed=args.seed, dtype=dtype),
        write_tiny_lora(out / "tiny-llama-lora.gguf", base=DEFAULT_PARAMS),
    ]
    if args.extra_bytes:
        written.append(
            write_tiny_model(
                out / "tiny-llama-big.gguf",
                seed=args.seed,
                dtype=dtype,
                extra_bytes=args.extra_bytes,
            )
        )
    written += write_malformed(out / "malformed").values()
    written += [*write_tiny_vision(out), *write_tiny_audio(out)]
    written.append(write_tiny_reranker(out / "tiny-reranker.gguf"))
    for path in written:
        print(f"{path.stat().st_size:>12}  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
