"""localrun.gguf.scan: what inspect() reads from good files, and how fast it refuses bad ones.

Hostile files are made by patching single fields of a valid tiny model, at offsets located with
gguf.GGUFReader on the still-valid file. Anything that could hang or grow memory runs in a child
process with a timeout and an address-space limit, so a regression fails the test instead of
wedging the run.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gguf import GGUFReader, Keys
from testmodels.malformed import write_absurd_array_length
from testmodels.text import DEFAULT_PARAMS, write_tiny_model
from testmodels.vocab import CHATML_TEMPLATE, build_vocab

from localrun.errors import (
    FileNotFoundError_,
    InvalidGGUFError,
    LocalrunError,
    NotRegularFileError,
)
from localrun.gguf import scan

from support.cli import assert_one_line_error

FAST = 3.0  # seconds: an invalid header is refused long before this
CHILD_TIMEOUT = 20
CHILD_MEMORY = 1 << 30  # bytes of address space the child may use


# -- helpers ----------------------------------------------------------------------------------


_CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from localrun.gguf import scan
from localrun.errors import LocalrunError
try:
    info = scan.inspect(sys.argv[1])
except LocalrunError as err:
    print(json.dumps({{"error": type(err).__name__, "message": err.message}}))
else:
    print(json.dumps({{"error": None, "architecture": info.architecture}}))
"""


def inspect_in_child(path: Path | str) -> dict[str, Any]:
    """Run gguf.inspect(path) in a fresh interpreter with a time and memory limit."""
    start = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD.format(limit=CHILD_MEMORY), str(path)],
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
            env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"inspect({path}) did not return within {CHILD_TIMEOUT} s")
    assert proc.returncode == 0, proc.stderr  # a MemoryError or a crash is a failure too
    result: dict[str, Any] = json.loads(proc.stdout)
    result["seconds"] = time.monotonic() - start
    return result


def assert_refused_fast(path: Path, *fragments: str) -> InvalidGGUFError:
    """inspect(path) raises InvalidGGUFError quickly, with one line naming the file."""
    start = time.monotonic()
    with pytest.raises(InvalidGGUFError) as caught:
        scan.inspect(path)
    elapsed = time.monotonic() - start
    assert elapsed < FAST, f"took {elapsed:.1f} s"
    err = caught.value
    assert str(path) in err.message
    assert "\n" not in err.message and "\r" not in err.message, err.message
    assert err.hint
    for fragment in fragments:
        assert fragment in err.message, (fragment, err.message)
    return err


def field_part(path: Path, key: str, index: int) -> tuple[int, int]:
    """(file offset, value) of the scalar parts[index] of metadata field `key`."""
    reader = GGUFReader(path)
    fld = reader.fields[key]
    index %= len(fld.parts)
    offset = fld.offset + sum(int(part.nbytes) for part in fld.parts[:index])
    return offset, int(fld.parts[index][0])


def tensor_part(path: Path, tensor: int, index: int) -> tuple[int, int]:
    """(file offset, value) of parts[index] of a tensor info: name_len, name, n_dims, dims,
    type, offset."""
    reader = GGUFReader(path)
    fld = reader.tensors[tensor].field
    offset = fld.offset + sum(int(part.nbytes) for part in fld.parts[:index])
    return offset, int(fld.parts[index][0])


def patch(path: Path, offset: int, old: bytes, new: bytes) -> None:
    assert len(old) == len(new)
    with path.open("r+b") as fh:
        fh.seek(offset)
        assert fh.read(len(old)) == old, "the layout is not what the test expects"
        fh.seek(offset)
        fh.write(new)


@pytest.fixture
def valid(tmp_path: Path) -> Callable[[str], Path]:
    """valid(name) -> a fresh small valid model to patch."""

    def make(name: str) -> Path:
        return write_tiny_model(tmp_path / f"{name}.gguf", n_layer=1)

    return make


# -- good files -------------------------------------------------------------------------------


def test_inspect_tiny_model(tiny_model: Path) -> None:
    info = scan.inspect(tiny_model)
    p = DEFAULT_PARAMS
    n_vocab = len(build_vocab()[0])
    n_embd, n_ff, n_layer = p["n_embd"], p["n_ff"], p["n_layer"]
    kv_dim = n_embd // p["n_head"] * p["n_head_kv"]
    per_layer = 2 * n_embd + 2 * n_embd * n_embd + 2 * kv_dim * n_embd + 3 * n_ff * n_embd
    expected_params = 2 * n_vocab * n_embd + n_layer * per_layer + n_embd

    assert info.kind == "model"
    assert info.architecture == "llama"
    assert info.name == "tiny-llama"
    assert info.version == 3
    assert info.size == tiny_model.stat().st_size
    assert info.parameter_count == expected_params
    assert info.parameter_count == sum(int(t.n_elements) for t in GGUFReader(tiny_model).tensors)
    assert info.tensor_count == 2 + 9 * n_layer + 1
    assert info.context_length == p["n_ctx"]
    assert info.embedding_length == n_embd
    assert info.block_count == n_layer
    assert info.head_count == p["n_head"]
    assert info.quantization == "F32"
    assert info.chat_template == CHATML_TEMPLATE
    assert info.adapter_type is None and info.lora_alpha is None
    assert info.pooling_type is None and info.details()["pooling_type"] is None  # generative
    # Arrays (the vocabulary) are not copied into the summary; scalars are.
    assert info.metadata["llama.context_length"] == p["n_ctx"]
    assert "tokenizer.ggml.tokens" not in info.metadata
    details = info.details()
    json.dumps(details)  # what goes into a manifest config must be JSON
    assert details["parameter_count"] == expected_params
    assert details["format"] == "gguf" and details["kind"] == "model"


def test_inspect_f16_model_reports_f16(tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path / "f16.gguf", dtype="f16", n_layer=1)
    assert scan.inspect(path).quantization == "F16"


def test_inspect_accepts_explicit_alignment(tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path / "aligned.gguf", n_layer=1, alignment=64)
    info = scan.inspect(path)
    assert info.architecture == "llama"
    assert info.metadata["general.alignment"] == 64


def test_inspect_tiny_lora(tiny_lora: Path) -> None:
    info = scan.inspect(tiny_lora)
    assert info.kind == "adapter"
    assert info.adapter_type == "lora"
    assert info.lora_alpha == 8.0
    assert info.architecture == "llama"
    assert info.chat_template is None
    assert info.parameter_count == sum(int(t.n_elements) for t in GGUFReader(tiny_lora).tensors)
    assert info.details()["kind"] == "adapter"


def test_inspect_accepts_pathlike_and_str(tiny_model: Path) -> None:
    assert scan.inspect(str(tiny_model)).parameter_count == scan.inspect(tiny_model).parameter_count


def test_inspect_fd_leaves_descriptor_open(tiny_model: Path) -> None:
    fd = scan.open_regular(tiny_model)
    try:
        info = scan.inspect_fd(fd, "shown-name")
        assert info.path == "shown-name"
        os.fstat(fd)  # still open
        assert os.lseek(fd, 0, os.SEEK_CUR) >= 0
    finally:
        os.close(fd)


# -- malformed samples --------------------------------------------------------------------------


EXPECTED_REASON = {
    "truncated": "past the end",
    "truncated_header": "past the end",
    "bad_magic": "bad magic",
    "bad_version": "version 99",
    "tensor_offset_past_end": "past the end",
    "absurd_array_length": "past the end",
    "zero_alignment": "alignment",
    "empty": "too small",
}


def test_every_malformed_sample_is_covered(malformed: dict[str, Path]) -> None:
    assert set(malformed) == set(EXPECTED_REASON)


@pytest.mark.parametrize("kind", sorted(EXPECTED_REASON))
def test_malformed_sample_refused(malformed: dict[str, Path], kind: str) -> None:
    result = inspect_in_child(malformed[kind])
    assert result["error"] == "InvalidGGUFError", result
    assert result["seconds"] < CHILD_TIMEOUT
    # ...and in this process, with the message checked.
    assert_refused_fast(malformed[kind], EXPECTED_REASON[kind])


# -- hostile headers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", [Keys.Tokenizer.SCORES, Keys.Tokenizer.TOKEN_TYPE, Keys.Tokenizer.LIST]
)
def test_absurd_array_length_fails_fast(tmp_path: Path, key: str) -> None:
    path = write_absurd_array_length(tmp_path / "absurd.gguf", key=key)
    result = inspect_in_child(path)
    assert result["error"] == "InvalidGGUFError", result
    assert result["seconds"] < 10
    assert_refused_fast(path, key, "past the end")  # refused by the pre-scan, not the reader


def test_absurd_byte_array_length_fails_fast(valid: Callable[[str], Path]) -> None:
    # The case gguf.GGUFReader alone never finishes: it walks an array element by element, and
    # past the end of the file a 1-byte element reads as empty and the offset stops moving, so
    # it loops 2**60 times while its lists grow. The pre-scan refuses it at once.
    path = valid("bytes")
    offset, item_type = field_part(path, Keys.Tokenizer.TOKEN_TYPE, 3)
    count_offset, count = field_part(path, Keys.Tokenizer.TOKEN_TYPE, 4)
    assert count_offset == offset + 4
    patch(path, offset, struct.pack("<IQ", item_type, count), struct.pack("<IQ", 0, 2**60))
    result = inspect_in_child(path)
    assert result["error"] == "InvalidGGUFError", result
    assert result["seconds"] < 10
    assert_refused_fast(path, Keys.Tokenizer.TOKEN_TYPE, "past the end")


@pytest.mark.parametrize(
    ("offset", "what"), [(8, "tensor_count"), (16, "kv_count")], ids=["tensors", "keys"]
)
@pytest.mark.parametrize("count", [2**63, 2**40, 10_000_000])
def test_absurd_header_counts(
    valid: Callable[[str], Path], offset: int, what: str, count: int
) -> None:
    path = valid(what)
    old = path.read_bytes()[offset : offset + 8]
    patch(path, offset, old, struct.pack("<Q", count))
    result = inspect_in_child(path)
    assert result["error"] == "InvalidGGUFError", result
    assert_refused_fast(path, str(count))


def test_count_slightly_too_large_is_refused(valid: Callable[[str], Path]) -> None:
    # One tensor more than the table holds: the walk runs into the tensor data and must still
    # end with a bounds or type error, not an exception from deeper down.
    path = valid("one-more")
    (tensors,) = struct.unpack_from("<Q", path.read_bytes(), 8)
    patch(path, 8, struct.pack("<Q", tensors), struct.pack("<Q", tensors + 1))
    assert_refused_fast(path)


@pytest.mark.parametrize("n_dims", [0, 5, 9, 2**32 - 1])
def test_bad_tensor_dimension_count(valid: Callable[[str], Path], n_dims: int) -> None:
    path = valid("dims")
    offset, old = tensor_part(path, 0, 2)
    patch(path, offset, struct.pack("<I", old), struct.pack("<I", n_dims))
    assert_refused_fast(path, f"{n_dims} dimensions", "token_embd.weight")


@pytest.mark.parametrize("ttype", [4, 5, 200, 2**32 - 1])  # 4, 5: removed Q4_2/Q4_3
def test_unknown_tensor_type(valid: Callable[[str], Path], ttype: int) -> None:
    path = valid("ttype")
    offset, old = tensor_part(path, 0, 4)
    patch(path, offset, struct.pack("<I", old), struct.pack("<I", ttype))
    assert_refused_fast(path, f"unknown type {ttype}")


def test_quantized_tensor_not_a_whole_number_of_blocks(valid: Callable[[str], Path]) -> None:
    path = valid("blocks")
    offset, ttype = tensor_part(path, 0, 4)
    assert ttype == 0  # F32
    patch(path, offset, struct.pack("<I", 0), struct.pack("<I", 2))  # Q4_0: blocks of 32
    dim_offset, dim = tensor_part(path, 0, 3)
    patch(path, dim_offset, struct.pack("<Q", dim), struct.pack("<Q", 48))
    assert_refused_fast(path, "block size 32")


def test_tensor_dimension_too_large(valid: Callable[[str], Path]) -> None:
    path = valid("huge-dim")
    offset, old = tensor_part(path, 0, 3)
    patch(path, offset, struct.pack("<Q", old), struct.pack("<Q", 2**62))
    assert_refused_fast(path, "past the end")


def test_misaligned_tensor_offset(valid: Callable[[str], Path]) -> None:
    path = valid("misaligned")
    offset, old = tensor_part(path, 1, 5)
    patch(path, offset, struct.pack("<Q", old), struct.pack("<Q", old + 4))
    assert_refused_fast(path, "aligned")


def test_nested_array_refused(valid: Callable[[str], Path]) -> None:
    path = valid("nested")
    # array parts: key_len, key, value_type (9), item_type, count, items...
    offset, item_type = field_part(path, Keys.Tokenizer.TOKEN_TYPE, 3)
    patch(path, offset, struct.pack("<I", item_type), struct.pack("<I", 9))
    assert_refused_fast(path, "nested array", Keys.Tokenizer.TOKEN_TYPE)


def test_unknown_array_element_type(valid: Callable[[str], Path]) -> None:
    path = valid("array-type")
    offset, item_type = field_part(path, Keys.Tokenizer.TOKEN_TYPE, 3)
    patch(path, offset, struct.pack("<I", item_type), struct.pack("<I", 13))
    assert_refused_fast(path, "unknown element type 13")


def test_unknown_value_type(valid: Callable[[str], Path]) -> None:
    path = valid("value-type")
    offset, vtype = field_part(path, Keys.LLM.CONTEXT_LENGTH.format(arch="llama"), 2)
    patch(path, offset, struct.pack("<I", vtype), struct.pack("<I", 77))
    assert_refused_fast(path, "unknown type 77")


def test_absurd_key_length(valid: Callable[[str], Path]) -> None:
    path = valid("key-length")
    offset, length = field_part(path, Keys.General.ARCHITECTURE, 0)
    patch(path, offset, struct.pack("<Q", length), struct.pack("<Q", 2**63))
    assert_refused_fast(path, "past the end")


def test_absurd_string_length(valid: Callable[[str], Path]) -> None:
    path = valid("string-length")
    # string parts: key_len, key, value_type, value_len, value
    offset, length = field_part(path, Keys.Tokenizer.CHAT_TEMPLATE, 3)
    patch(path, offset, struct.pack("<Q", length), struct.pack("<Q", 2**64 - 1))
    assert_refused_fast(path, "past the end")


@pytest.mark.parametrize("alignment", [3, 48, 2**31 + 1])
def test_alignment_not_power_of_two(tmp_path: Path, alignment: int) -> None:
    path = write_tiny_model(tmp_path / "align.gguf", n_layer=1, alignment=32)
    offset, old = field_part(path, Keys.General.ALIGNMENT, -1)
    patch(path, offset, struct.pack("<I", old), struct.pack("<I", alignment))
    assert_refused_fast(path, "power of two")


def test_huge_alignment_leaves_no_room_for_data(tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path / "align.gguf", n_layer=1, alignment=32)
    offset, old = field_part(path, Keys.General.ALIGNMENT, -1)
    patch(path, offset, struct.pack("<I", old), struct.pack("<I", 2**31))
    assert_refused_fast(path)


def test_alignment_of_the_wrong_type(tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path / "align.gguf", n_layer=1, alignment=32)
    offset, vtype = field_part(path, Keys.General.ALIGNMENT, 2)
    patch(path, offset, struct.pack("<I", vtype), struct.pack("<I", 5))  # int32, same size
    assert_refused_fast(path, "uint32")


@pytest.mark.parametrize("version", [3, 2], ids=["v3", "v2"])
def test_big_endian_version_refused(valid: Callable[[str], Path], version: int) -> None:
    path = valid("big-endian")
    patch(path, 4, struct.pack("<I", 3), struct.pack(">I", version))
    assert_refused_fast(path, "big-endian")


@pytest.mark.parametrize("version", [0, 1, 4])
def test_unsupported_version(valid: Callable[[str], Path], version: int) -> None:
    path = valid("version")
    patch(path, 4, struct.pack("<I", 3), struct.pack("<I", version))
    assert_refused_fast(path, f"version {version}")


def test_header_only_file(tmp_path: Path) -> None:
    path = tmp_path / "header.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))
    # Well-formed, but not a model llama.cpp could run: refused at once, naming the key.
    assert_refused_fast(path, "general.architecture is missing")


def test_cut_anywhere_in_the_header_is_refused(valid: Callable[[str], Path]) -> None:
    # Cut the file at many points inside the metadata and tensor table: always a clean refusal.
    source = valid("cut")
    data = source.read_bytes()
    data_offset = int(GGUFReader(source).data_offset)
    cut = source.with_name("cut-short.gguf")
    for end in range(0, data_offset, max(1, data_offset // 97)):
        cut.write_bytes(data[:end])
        assert_refused_fast(cut)


def test_control_characters_in_names_stay_on_one_line(valid: Callable[[str], Path]) -> None:
    path = valid("newline")
    offset, _ = tensor_part(path, 0, 1)  # the name "token_embd.weight"
    patch(path, offset, b"token_embd.weight", b"token\nembd\rweigh\x1b")
    n_offset, n_dims = tensor_part(path, 0, 2)
    patch(path, n_offset, struct.pack("<I", n_dims), struct.pack("<I", 9))
    assert_refused_fast(path, "9 dimensions")


def test_duplicate_tensor_name_refused(valid: Callable[[str], Path]) -> None:
    # The gguf reader raises here, with the raw name in its message: still one line.
    path = valid("duplicate")
    names_ = [t.name for t in GGUFReader(path).tensors]
    for name in ("blk.0.attn_k.weight", "blk.0.attn_q.weight"):
        offset, _ = tensor_part(path, names_.index(name), 1)
        patch(path, offset, name.encode(), b"blk.0\nattn_x.weight")
    assert_refused_fast(path, "duplicated tensor")


def test_duplicate_key_refused(valid: Callable[[str], Path]) -> None:
    path = valid("duplicate-key")
    block_count = Keys.LLM.BLOCK_COUNT.format(arch="llama")
    offset, length = field_part(path, block_count, 0)
    assert length == len(Keys.General.FILE_TYPE)  # both uint32: a same-size rename
    patch(path, offset + 8, block_count.encode(), Keys.General.FILE_TYPE.encode())
    assert_refused_fast(path, "duplicated key")


# -- not a regular file -----------------------------------------------------------------------


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary folder with a short path (a UNIX socket path must fit in 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="lr-", dir="/tmp") as name:
        yield Path(name)


@pytest.fixture
def no_open(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """forbid(path): fail the test if `path` is ever opened, by os.open or open()."""
    import builtins

    forbidden: set[str] = set()
    real_os_open, real_open = os.open, builtins.open

    def check(target: Any) -> None:
        if isinstance(target, (str, os.PathLike)) and os.path.abspath(target) in forbidden:
            raise AssertionError(f"{target} was opened")

    def spy_os_open(path: Any, *args: Any, **kwargs: Any) -> int:
        check(path)
        return real_os_open(path, *args, **kwargs)

    def spy_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        check(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy_os_open)
    monkeypatch.setattr(builtins, "open", spy_open)
    return lambda path: forbidden.add(os.path.abspath(path))


def _refused(path: Path, what: str) -> NotRegularFileError:
    start = time.monotonic()
    with pytest.raises(NotRegularFileError) as caught:
        scan.inspect(path)
    assert time.monotonic() - start < FAST
    assert str(path) in caught.value.message and what in caught.value.message
    assert caught.value.hint
    return caught.value


def test_directory_refused(tmp_path: Path, no_open: Callable[[Path], None]) -> None:
    folder = tmp_path / "model.gguf"
    folder.mkdir()
    no_open(folder)
    _refused(folder, "a directory")


def test_fifo_refused_without_opening(tmp_path: Path, no_open: Callable[[Path], None]) -> None:
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    no_open(fifo)
    _refused(fifo, "FIFO")


def test_fifo_does_not_hang(tmp_path: Path) -> None:
    # The same in a child with a timeout: a regression that opens the FIFO blocks forever.
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    result = inspect_in_child(fifo)
    assert result["error"] == "NotRegularFileError", result
    assert result["seconds"] < 10


@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"])
def test_devices_refused(device: str, no_open: Callable[[Path], None]) -> None:
    if not os.path.exists(device):
        pytest.skip(f"{device} does not exist here")
    no_open(Path(device))
    _refused(Path(device), "a device")


def test_device_does_not_hang() -> None:
    result = inspect_in_child("/dev/zero")  # reading it would never reach an end
    assert result["error"] == "NotRegularFileError", result


def test_a_kernel_file_is_refused(cli: Any, tmp_path: Path) -> None:
    # sysfs files are "regular" files of 4096 bytes that cannot be mapped: FROM one was an
    # "unexpected OSError" once.
    found = next(
        (p for p in ("/sys/kernel/profiling", "/sys/kernel/address_bits") if os.path.isfile(p)),
        None,
    )
    if found is None:
        pytest.skip("no sysfs here")
    with pytest.raises(NotRegularFileError) as caught:
        scan.inspect(found)
    assert found in caught.value.message and caught.value.hint
    (tmp_path / "Modelfile").write_text(f"FROM {found}\n")
    result = cli("create", "sys", "-f", str(tmp_path / "Modelfile"))
    assert_one_line_error(result, found)


def test_socket_refused(short_tmp: Path, no_open: Callable[[Path], None]) -> None:
    path = short_tmp / "sock.gguf"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        no_open(path)
        _refused(path, "a socket")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.gguf"
    with pytest.raises(FileNotFoundError_) as caught:
        scan.inspect(path)
    assert str(path) in caught.value.message
    assert isinstance(caught.value, LocalrunError) and caught.value.hint


def test_dangling_symlink_is_missing(tmp_path: Path) -> None:
    link = tmp_path / "dangling.gguf"
    link.symlink_to(tmp_path / "gone.gguf")
    with pytest.raises(FileNotFoundError_):
        scan.inspect(link)


def test_path_through_a_file_refused(tiny_model: Path) -> None:
    with pytest.raises((NotRegularFileError, FileNotFoundError_)):
        scan.inspect(tiny_model / "inside.gguf")


def test_symlink_to_valid_file_accepted(tmp_path: Path, tiny_model: Path) -> None:
    link = tmp_path / "link.gguf"
    link.symlink_to(tiny_model)
    info = scan.inspect(link)
    assert info.architecture == "llama"
    assert info.path == str(link)
    assert info.size == tiny_model.stat().st_size


def test_symlink_to_fifo_refused(tmp_path: Path, no_open: Callable[[Path], None]) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "link.gguf"
    link.symlink_to(fifo)
    no_open(fifo)
    no_open(link)
    _refused(link, "FIFO")


def test_symlink_to_device_refused(tmp_path: Path, no_open: Callable[[Path], None]) -> None:
    link = tmp_path / "zero.gguf"
    link.symlink_to("/dev/zero")
    no_open(link)
    no_open(Path("/dev/zero"))
    _refused(link, "a device")


def test_open_regular_rejects_a_swap_after_the_check(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The path passes the stat check, then is replaced by a FIFO before it is opened: the check
    # on the open descriptor refuses it, and O_NONBLOCK keeps the open itself from hanging.
    path = tmp_path / "swap.gguf"
    path.write_bytes(tiny_model.read_bytes())
    real_stat = os.stat

    def stat_then_swap(target: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        result = real_stat(target, *args, **kwargs)
        if os.fspath(target) == str(path):
            path.unlink()
            os.mkfifo(path)
        return result

    monkeypatch.setattr(os, "stat", stat_then_swap)
    with pytest.raises(NotRegularFileError, match="FIFO"):
        scan.open_regular(path)


def test_format_count() -> None:
    assert scan.format_count(134_515_008) == "134.52M"
    assert scan.format_count(7_000_000_000) == "7.00B"
    assert scan.format_count(1_500) == "1.50K"
    assert scan.format_count(999) == "999"
    assert scan.is_gguf_path(Path("a/B.GGUF")) and not scan.is_gguf_path(Path("a.bin"))
