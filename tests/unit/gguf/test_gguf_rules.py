"""localrun.gguf.rules: the values llama.cpp trusts are checked before it sees a file.

Each case is a mutant of the valid tiny model (scripts/fuzzlib/layout.py edits and re-serializes the
header): the audit's triggers that crashed, hung or blew up llama.cpp, refused by `inspect` with
the key and what was wrong. Headers whose counts are huge are read in a child process under an
address-space limit, so a regression fails instead of exhausting the machine.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from fuzzlib import layout as gguf_layout

from localrun.errors import InvalidGGUFError
from localrun.gguf import scan

from support import PATIENCE_S

STRING, U32, F32, ARRAY = gguf_layout.STRING, gguf_layout.U32, gguf_layout.F32, gguf_layout.ARRAY
Edit = Callable[[gguf_layout.Layout], object]


@pytest.fixture
def mutant(tmp_path: Path, tiny_model: Path) -> Callable[[Edit], Path]:
    """mutant(edit) -> the path of the tiny model with `edit` applied to its header."""
    base = tiny_model.read_bytes()

    def make(edit: Edit) -> Path:
        layout = gguf_layout.parse(base)
        edit(layout)
        path = tmp_path / f"mutant-{len(list(tmp_path.iterdir()))}.gguf"
        path.write_bytes(gguf_layout.serialize(layout))
        return path

    return make


def refused(path: Path, *fragments: str) -> str:
    with pytest.raises(InvalidGGUFError) as caught:
        scan.inspect(path)
    message = caught.value.message
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def test_the_unchanged_model_and_smollm2_pass(
    mutant: Callable[[Edit], Path], smollm2_path: str
) -> None:
    assert scan.inspect(mutant(lambda lay: None)).architecture == "llama"
    info = scan.inspect(smollm2_path)
    assert info.architecture == "llama" and info.chat_template


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("llama.block_count", 2**32 - 1, "llama.block_count is 4294967295"),
        ("llama.block_count", 0, "llama.block_count is 0"),
        ("llama.block_count", 3, "tensors for 2 blocks"),
        ("llama.block_count", 1, "tensors for block 1"),
        ("llama.attention.head_count", 0, "llama.attention.head_count is 0"),
        ("llama.attention.head_count_kv", 3, "does not divide"),
        ("llama.embedding_length", 2**31, "between 0 and 2^31-1"),
        ("llama.context_length", 0, "llama.context_length is 0"),
        ("llama.vocab_size", 300, "llama.vocab_size is 300"),
    ],
)
def test_counts_out_of_range_are_refused(
    mutant: Callable[[Edit], Path], key: str, value: int, fragment: str
) -> None:
    refused(mutant(lambda lay: lay.set(key, U32, value)), fragment)


def test_a_model_without_attention_has_no_heads(tiny_mamba: Path) -> None:
    # Mamba's converters write attention.head_count 0; a llama model with 0 heads is refused.
    info = scan.inspect(tiny_mamba)
    assert info.architecture == "mamba" and info.head_count == 0


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0, 0.0])
def test_epsilon_must_be_finite_and_small(mutant: Callable[[Edit], Path], value: float) -> None:
    key = "llama.attention.layer_norm_rms_epsilon"
    refused(mutant(lambda lay: lay.set(key, F32, value)), key)


def test_rope_base_must_be_finite(mutant: Callable[[Edit], Path]) -> None:
    refused(mutant(lambda lay: lay.set("llama.rope.freq_base", F32, math.nan)), "finite")


@pytest.mark.parametrize(
    ("model", "fragment"),
    [
        ("bert", "does not work with llama models"),
        ("t5", "does not work with llama models"),
        ("none", "no vocabulary"),
        ("sentencepiece-9", "is not a tokenizer llama.cpp has"),
    ],
)
def test_the_tokenizer_must_fit_the_architecture(
    mutant: Callable[[Edit], Path], model: str, fragment: str
) -> None:
    refused(mutant(lambda lay: lay.set("tokenizer.ggml.model", STRING, model)), fragment)


def _tokens(token: Callable[[int], bytes]) -> Edit:
    def edit(lay: gguf_layout.Layout) -> None:
        kv = lay.get("tokenizer.ggml.tokens")
        assert kv is not None
        count = len(kv.value[1])
        kv.value, kv.raw = (STRING, [token(i) for i in range(count)]), b""

    return edit


def test_the_vocabulary_must_be_distinct_utf8_text(mutant: Callable[[Edit], Path]) -> None:
    refused(mutant(_tokens(lambda i: b"\xff\xfe")), "entry 1 repeats an earlier token")
    refused(mutant(_tokens(lambda i: b"")), "repeats")
    refused(mutant(_tokens(lambda i: b"t%d\xff" % i)), "entry 0 is not valid UTF-8")


def test_vocabulary_arrays_and_embedding_rows_must_agree(mutant: Callable[[Edit], Path]) -> None:
    def short_scores(lay: gguf_layout.Layout) -> None:
        kv = lay.get("tokenizer.ggml.scores")
        assert kv is not None
        kv.value, kv.raw = (kv.value[0], kv.value[1][:10]), b""

    refused(mutant(short_scores), "tokenizer.ggml.scores has 10 entries for 375 tokens")

    def swap(lay: gguf_layout.Layout) -> None:
        lay.tensors[0].dims.reverse()  # token_embd.weight

    refused(mutant(swap), "token_embd.weight is 375 wide but llama.embedding_length is 64")


def test_tensor_data_must_be_32_byte_aligned(mutant: Callable[[Edit], Path]) -> None:
    # general.alignment 1 made ggml abort ("buffer pointer must be aligned") on the first load.
    refused(mutant(lambda lay: lay.set("general.alignment", U32, 1)), "not a multiple of 32")
    refused(mutant(lambda lay: lay.set("general.alignment", U32, 3)), "a power of two")


def test_duplicated_and_zero_sized_tensors_are_refused(mutant: Callable[[Edit], Path]) -> None:
    def duplicate(lay: gguf_layout.Layout) -> None:
        lay.tensors.append(gguf_layout.Tensor(**vars(lay.tensors[1])))

    refused(mutant(duplicate), "appears twice")

    def zero(lay: gguf_layout.Layout) -> None:
        lay.tensors[0].dims = [64, 0]

    refused(mutant(zero), "zero dimension")


def test_an_oversized_chat_template_is_refused(mutant: Callable[[Edit], Path]) -> None:
    # 5.9 MB was accepted once, and the model's config then could not be read: every show,
    # run and chat was a 500.
    template = "{{ 'x' }}" * 655_000
    path = mutant(lambda lay: lay.set("tokenizer.chat_template", STRING, template))
    refused(path, "tokenizer.chat_template is 5895000 bytes")


def test_missing_architecture_is_refused(mutant: Callable[[Edit], Path]) -> None:
    refused(mutant(lambda lay: lay.drop("general.architecture")), "general.architecture")


def test_adapters_are_not_held_to_model_rules(tiny_lora: Path) -> None:
    assert scan.inspect(tiny_lora).kind == "adapter"


_CHILD = """
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from localrun.gguf import scan
from localrun.errors import InvalidGGUFError
start = time.monotonic()
try:
    scan.inspect(sys.argv[1])
    message = None
except InvalidGGUFError as err:
    message = err.message
# VmHWM: this process's peak since exec (ru_maxrss would carry the parent's over exec).
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
            if line.startswith("VmHWM:"))
print(json.dumps({"message": message, "seconds": time.monotonic() - start, "peak": peak}))
"""


@pytest.mark.parametrize(
    ("name", "edit", "fragment"),
    [
        (
            "1M empty strings",
            lambda lay: lay.set("fuzz.strings", ARRAY, (STRING, [b""] * 1_000_000)),
            None,
        ),
        (
            "1M keys",
            lambda lay: lay.kvs.extend(gguf_layout.KV(f"k{i}", 0, 0) for i in range(1_000_000)),
            "1000023 metadata keys (at most 65536)",
        ),
        (
            "1M tensor infos",
            lambda lay: lay.tensors.extend(
                gguf_layout.Tensor(f"t{i}", [32], 0, 0) for i in range(1_000_000)
            ),
            "1000021 tensors (at most 131072)",
        ),
    ],
)
def test_header_reading_is_bounded_by_the_file_not_its_claims(
    mutant: Callable[[Edit], Path], name: str, edit: Edit, fragment: str | None
) -> None:
    # These took a create job past 4 GB (1M keys: 3.4 GB and 120 s) through the gguf package's
    # reader. Now: refused, or read, within a second or two and a few hundred MB.
    path = mutant(edit)
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path)],
        capture_output=True,
        text=True,
        timeout=PATIENCE_S,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["seconds"] < 10, (name, result)
    assert result["peak"] < 700 * 2**20, (name, result)
    if fragment:
        assert fragment in result["message"], result
    if fragment is None:  # 1M empty strings under an unknown key: a valid file
        assert result["message"] is None, result
