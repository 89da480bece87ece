"""GPU runtimes (`localrun runtime`) without a build: selection, damaged and mismatched runtimes,
the CUDA architecture list, the exact runtime's patch and source handling, and what is said
when a GPU sits idle."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from localrun.errors import RuntimeBuildError, ToolchainError
from localrun.runtimes import toolchain
from localrun.runtimes.source import bindings_version
from localrun.store.blobs import hash_file

from support.cli import CLI, assert_one_line_error

VERSION = bindings_version()


def info(cli: CLI, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = cli("info", "--json", env=env)
    assert result.code == 0, result
    return json.loads(result.stdout)["llama_cpp"]  # type: ignore[no-any-return]


def fake_runtime(home: Path, name: str, body: bytes, **record: Any) -> Path:
    """An installed-looking runtime whose module is `body` (not a library)."""
    folder = home / "runtimes" / name
    folder.mkdir(parents=True)
    module = folder / "libggml-vulkan.so"
    module.write_bytes(body)
    st = module.stat()
    fields = {
        "name": name,
        "backend": "vulkan",
        "llama_cpp_version": VERSION,
        "ggml_version": "0.0.0",
        "toolchain": "test",
        "module": module.name,
        "sha256": hash_file(module),
        "size": len(body),
        "stamp": [st.st_size, st.st_mtime_ns],
        **record,
    }
    (folder / "runtime.json").write_text(json.dumps(fields))
    return module


def test_runtime_commands_without_runtimes(cli: CLI) -> None:
    listed = cli("runtime", "list")
    assert listed.code == 0 and "no runtime installed" in listed.stdout
    assert "selection: auto" in listed.stdout
    assert_one_line_error(cli("runtime", "select", "vulkan-9.9.9"), "not installed")
    assert_one_line_error(cli("runtime", "rm", "ghost"), "not installed")
    bad = cli("runtime", "select", "../etc")
    assert bad.code != 0 and "Traceback" not in bad.stderr
    assert cli("runtime", "select", "cpu").code == 0
    assert json.loads(cli("runtime", "list", "--json").stdout)["selected"] == "cpu"
    built = info(cli)
    assert built["runtime"] == "built-in" and built["runtime_warning"] is None
    refused = cli("runtime", "install", "metal")
    assert_one_line_error(refused, "expected cuda, vulkan, auto or exact")


def test_an_exact_runtime_of_another_cpu_or_a_damaged_one_is_not_loaded(
    cli: CLI, home: Path
) -> None:
    """The exact runtime (runtimes/exact.py) is built with -march=native: on another CPU it
    could stop the process at its first instruction, so it is listed but never loaded; one whose
    bytes changed since its install is a warning in `info`, and the CPU as installed."""
    from localrun.runtimes import exact

    other = fake_runtime(home, f"exact-{VERSION}", b"\x7fELF not a library", backend="exact")
    record = json.loads((other.parent / "runtime.json").read_text())
    (other.parent / "runtime.json").write_text(json.dumps({**record, "cpu": "another-cpu"}))
    assert exact.installed(VERSION) == []
    listed = cli("runtime", "list")
    row = next(line for line in listed.stdout.splitlines() if line.startswith("exact-"))
    assert row.rstrip().endswith("another CPU"), listed.stdout
    assert info(cli)["exact"] is None
    (other.parent / "runtime.json").write_text(
        json.dumps({**record, "cpu": exact.cpu_identity(), "sha256": "0" * 64, "stamp": [0, 0]})
    )
    assert [r.name for r in exact.installed(VERSION)] == [f"exact-{VERSION}"]
    built = info(cli)
    assert built["exact"] is None and "damaged" in built["exact_warning"], built


def write_exact_source(tree: Path) -> tuple[str, ...]:
    """A source whose ggml-cpu files hold exactly the texts the exact runtime changes (each
    branch edit's in its function's AVX2 branch); the files' names, ops.cpp first."""
    from localrun.runtimes import exact

    folder = tree / exact.GGML_CPU
    names = ("ops.cpp", *{edit[0] for edit in (*exact.EDITS, *exact.BRANCH_EDITS)})
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
    ops = f"head\n{exact.KERNEL_FROM} old kernel }}\n{exact.KERNEL_TO}  entry }}\n"
    (folder / "ops.cpp").write_text(ops)
    for name in names[1:]:
        olds = [old for file, old, _ in exact.EDITS if file == name]
        for file, scope, pairs in exact.BRANCH_EDITS:
            if file == name:
                body = "\nmiddle\n".join(old for old, _ in pairs)
                branch = f"#if defined __AVX2__\n{body}\n#elif defined __AVX__\n#endif\n"
                olds.append(f"{scope})\n{branch}}}")
        (folder / name).write_text("top\n" + "\nmiddle\n".join(olds) + "\nbottom\n")
    return names


def test_the_exact_patch_refuses_another_source_and_replaces_its_own(tmp_path: Path) -> None:
    from localrun.runtimes import exact

    folder = tmp_path / exact.GGML_CPU
    names = write_exact_source(tmp_path)
    assert "llamafile/sgemm.cpp" in names  # the weights' products, not only the attention
    assert "arch/x86/quants.c" in names  # x86's K-quant dot products
    for name in names:
        (folder / name).write_text("// another llama.cpp\n")
    with pytest.raises(RuntimeBuildError, match="not the one the exact runtime changes"):
        exact.patch_source(tmp_path)
    write_exact_source(tmp_path)
    exact.patch_source(tmp_path)

    def files() -> dict[str, str]:
        return {name: (folder / name).read_text() for name in names}

    patched = files()
    kernel = exact.KERNEL.read_text()
    assert (
        patched["ops.cpp"].startswith("head\n" + kernel) and "old kernel" not in patched["ops.cpp"]
    )
    assert patched["ops.cpp"].endswith(f"{exact.KERNEL_TO}  entry }}\n")
    assert all(new in patched[file] for file, _, new in exact.EDITS)
    for file, _, pairs in exact.BRANCH_EDITS:
        assert all(new in patched[file] and old not in patched[file] for old, new in pairs)
    exact.patch_source(tmp_path)  # again: nothing changes
    assert files() == patched


def test_a_branch_edit_stays_in_its_functions_avx2_branch() -> None:
    """Nested #if blocks are skipped; the same text in another function or branch is left; a
    function without the branch, or with it past its end, is refused."""
    from localrun.errors import RuntimeBuildError
    from localrun.runtimes import exact

    pairs = (("    acc = 1;\n", "    acc = 2; // localrun (exact)\n"),)
    source = (
        "void f(int n) {\n#if defined __AVX2__\n#ifdef __BMI2__\n    x();\n#else\n    y();\n"
        "#endif\n    acc = 1;\n#elif defined __AVX__\n    acc = 1;\n#endif\n}\n"
        "void g(int n) {\n#if defined(__AVX2__)\n    acc = 1;\n#else\n    acc = 1;\n#endif\n}\n"
    )
    once = exact._patch_branch(source, "void f(", pairs)
    assert once.count("acc = 2;") == 1 and once.index("acc = 2;") < once.index("#elif")
    assert exact._patch_branch(once, "void f(", pairs) == once  # this version's: unchanged
    twice = exact._patch_branch(once, "void g(", pairs)
    assert twice.count("acc = 2;") == 2 and twice.rindex("acc = 2;") < twice.rindex("#else")
    for scope, text in (
        ("void h(", source),  # no such function
        ("void f(", "void f(int n) {\n    acc = 1;\n}\n#if defined __AVX2__\n    acc = 1;\n"),
        ("void f(", source.replace("    acc = 1;\n#elif", "#elif", 1)),  # the text moved
    ):
        with pytest.raises(RuntimeBuildError, match="not the one the exact runtime changes"):
            exact._patch_branch(text, scope, pairs)


def test_a_source_another_localrun_patched_is_unpacked_afresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exact runtime's build folder keeps its unpacked, patched source; a newer localrun
    whose edits differ unpacks it again instead of refusing it."""
    import tarfile

    from localrun.runtimes import build, exact

    top = tmp_path / "sdist" / f"llama_cpp_python-{VERSION}"
    tree = top / "vendor" / "llama.cpp"
    names = write_exact_source(tree)
    (top / "PKG-INFO").write_text(f"Version: {VERSION}\n")
    (tree / "ggml" / "CMakeLists.txt").write_text("project(ggml)\n")
    archive = tmp_path / "llama_cpp_python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(top, arcname=top.name)
    monkeypatch.setenv("LOCALRUN_RUNTIME_SOURCE", str(archive))
    tools = toolchain.Toolchain(exact.BACKEND, "test", "cmake")
    plan = build.Plan(exact.BACKEND, f"exact-{VERSION}", (), tools, VERSION)
    work, said = tmp_path / "work", []
    quants = build.prepared(plan, work, said.append).tree / exact.GGML_CPU / "arch/x86/quants.c"
    fresh = quants.read_text()
    assert said and all(name.endswith((".cpp", ".c", ".h")) for name in names)
    # Another localrun's edit of one function: this version's text is not in its branch.
    _, _, pairs = next(edit for edit in exact.BRANCH_EDITS if edit[0] == "arch/x86/quants.c")
    new = next(new for _, new in pairs if new)
    quants.write_text(fresh.replace(new, "    // an earlier localrun (exact) edit\n", 1))
    said.clear()
    build.prepared(plan, work, said.append)
    assert quants.read_text() == fresh, "the tree was not unpacked and patched afresh"
    assert any("unpacking" in line for line in said), said
    said.clear()
    build.prepared(plan, work, said.append)  # this version's tree: reused as it is
    assert quants.read_text() == fresh and not said, said


def test_a_source_folder_is_copied_and_the_copy_patched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LOCALRUN_RUNTIME_SOURCE naming a folder: `install exact` patched 8 of the person's own
    files in place (issue 76). The build copies it into its folder and patches the copy; the
    person's folder stays byte for byte as it was, a file that is a link out of it included."""
    from localrun.runtimes import build, exact

    top = tmp_path / "mine" / f"llama_cpp_python-{VERSION}"
    tree = top / "vendor" / "llama.cpp"
    names = write_exact_source(tree)
    (top / "PKG-INFO").write_text(f"Version: {VERSION}\n")
    (tree / "ggml" / "CMakeLists.txt").write_text("project(ggml)\n")
    # One of the files to patch is a link to a file of the person's elsewhere.
    ops = tree / exact.GGML_CPU / "ops.cpp"
    elsewhere = tmp_path / "elsewhere-ops.cpp"
    ops.rename(elsewhere)
    ops.symlink_to(elsewhere)

    def snapshot() -> dict[str, bytes | str]:
        found: dict[str, bytes | str] = {str(elsewhere): elsewhere.read_bytes()}
        for path in sorted(top.rglob("*")):
            if path.is_symlink():
                found[str(path)] = os.readlink(path)
            elif path.is_file():
                found[str(path)] = path.read_bytes()
        return found

    before = snapshot()
    monkeypatch.setenv("LOCALRUN_RUNTIME_SOURCE", str(top))
    tools = toolchain.Toolchain(exact.BACKEND, "test", "cmake")
    plan = build.Plan(exact.BACKEND, f"exact-{VERSION}", (), tools, VERSION)
    work, said = tmp_path / "work", []
    src = build.prepared(plan, work, said.append)
    assert snapshot() == before, "the person's source folder was changed"
    assert src.tree.is_relative_to(work) and any("copying" in line for line in said), said
    folder = src.tree / exact.GGML_CPU
    patched = {name: (folder / name).read_text() for name in names}
    assert not (folder / "ops.cpp").is_symlink()
    assert patched["ops.cpp"].startswith("head\n" + exact.KERNEL.read_text())
    assert all(new in patched[file] for file, _, new in exact.EDITS)
    said.clear()
    assert build.prepared(plan, work, said.append).tree == src.tree and not said  # reused
    assert snapshot() == before
    # A link to a folder of the person's outside the source: its files would be patched
    # through it wherever it leads. Refused, before anything is built.
    outside = tmp_path / "my-ggml-cpu"
    (tree / exact.GGML_CPU).rename(outside)
    (tree / exact.GGML_CPU).symlink_to(outside)
    before = snapshot() | {str(p): p.read_bytes() for p in outside.rglob("*") if p.is_file()}
    with pytest.raises(RuntimeBuildError, match="links a folder outside itself"):
        build.prepared(plan, tmp_path / "work2", said.append)
    after = snapshot() | {str(p): p.read_bytes() for p in outside.rglob("*") if p.is_file()}
    assert after == before


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("not a library", "did not load"),
        ("changed since install", "damaged"),
        ("missing", "missing"),
        ("other bindings", "built for llama-cpp-python 0.0.1"),
    ],
)
def test_a_broken_runtime_gives_one_warning_and_the_cpu(
    cli: CLI, home: Path, case: str, fragment: str
) -> None:
    name = f"vulkan-{VERSION}"
    if case == "other bindings":
        name = "vulkan-0.0.1"
    module = fake_runtime(
        home,
        name,
        b"\x7fELF not really" * 100,
        **({"llama_cpp_version": "0.0.1"} if case == "other bindings" else {}),
    )
    if case == "changed since install":
        module.write_bytes(b"\x7fELF swapped" * 100)
    elif case == "missing":
        module.unlink()
    if case != "other bindings":  # auto skips a runtime built for other bindings, silently
        cli("runtime", "select", name)
    env = {"LOCALRUN_RUNTIME": name} if case == "other bindings" else None
    built = info(cli, env)
    assert built["runtime"] == "built-in", built
    assert fragment in (built["runtime_warning"] or ""), built
    assert built["backends"] == ["CPU"] and not built["gpu_devices"]
    shown = cli("info", env=env)
    assert shown.code == 0 and fragment in shown.stdout


def test_auto_skips_runtimes_for_other_bindings_and_says_so(cli: CLI, home: Path) -> None:
    # After an upgrade of llama-cpp-python: the old runtime is not loaded, and never silently.
    fake_runtime(home, "vulkan-0.0.1", b"junk", llama_cpp_version="0.0.1")
    built = info(cli)
    assert built["runtime"] == "built-in"
    assert "built for llama-cpp-python 0.0.1" in built["runtime_warning"]
    assert "localrun runtime install vulkan" in built["runtime_warning"]
    listed = cli("runtime", "list")
    assert "(stale)" in listed.stdout


def test_a_failed_reinstall_keeps_the_installed_runtime(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from localrun.errors import StoreError
    from localrun.runtimes import layout

    fake_runtime(home, f"vulkan-{VERSION}", b"old module")
    [old] = layout.installed()
    staged = layout.staging_folder()
    (staged / old.module).write_bytes(b"new module")
    real = os.replace
    calls: list[object] = []

    def failing(src: object, dst: object) -> None:
        calls.append(src)
        if len(calls) == 2:  # the new folder's move into place, the old one moved aside
            raise OSError(28, "No space left on device")
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(StoreError):
        layout.install_folder(staged, old)
    monkeypatch.setattr(os, "replace", real)
    [kept] = layout.installed()
    assert kept.module_path.read_bytes() == b"old module"


def test_damaged_records_and_removal(cli: CLI, home: Path) -> None:
    fake_runtime(home, "cuda-x-sm90", b"junk", backend="cuda", targets=["sm_90; rm -rf"])
    fake_runtime(home, f"vulkan-{VERSION}", b"junk")
    (home / "runtimes" / "broken").mkdir()
    (home / "runtimes" / "broken" / "runtime.json").write_text("{not json")
    listed = json.loads(cli("runtime", "list", "--json").stdout)
    assert [r["name"] for r in listed["runtimes"]] == [f"vulkan-{VERSION}"]
    assert cli("runtime", "select", f"vulkan-{VERSION}").code == 0
    removed = cli("runtime", "rm", f"vulkan-{VERSION}")
    assert removed.code == 0 and "removed runtime" in removed.stdout
    after = json.loads(cli("runtime", "list", "--json").stdout)
    assert after["selected"] == "auto" and after["runtimes"] == []
    assert info(cli)["runtime"] == "built-in"
    # A bad LOCALRUN_RUNTIME: the runtime commands refuse it; a model still runs (on the CPU,
    # the setting named in the warning).
    assert_one_line_error(
        cli("runtime", "list", env={"LOCALRUN_RUNTIME": "no/such"}), "LOCALRUN_RUNTIME"
    )
    shown = info(cli, {"LOCALRUN_RUNTIME": "no/such"})
    assert shown["runtime"] == "built-in" and "LOCALRUN_RUNTIME" in shown["runtime_warning"]


def test_cuda_architectures() -> None:
    assert toolchain.cuda_architectures("sm_90, 8.9", []) == ["89", "90"]
    assert toolchain.cuda_architectures(None, ["9.0", "8.6", "9.0"]) == ["86", "90"]
    with pytest.raises(ToolchainError, match="no NVIDIA GPU"):
        toolchain.cuda_architectures(None, [])
    with pytest.raises(ToolchainError, match="not a CUDA architecture"):
        toolchain.cuda_architectures("hopper", [])


def test_missing_vulkan_pieces_are_named_with_their_packages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(toolchain, "INCLUDE_DIRS", ("/nonexistent",))
    monkeypatch.delenv("VULKAN_SDK", raising=False)
    with pytest.raises(ToolchainError) as caught:
        toolchain.vulkan()
    assert "Vulkan headers" in caught.value.message
    assert "libvulkan-dev" in (caught.value.hint or "")


def test_an_idle_gpu_is_said_once_with_the_fix(home: Path) -> None:
    from localrun.hardware.system import GPU
    from localrun.runtimes import advice, layout

    nvidia = [GPU(0, "NVIDIA RTX 4090", "cuda", 24 << 30, 20 << 30, compute="8.9")]
    radeon = [GPU(0, "AMD Radeon RX 7900", "vulkan", 16 << 30, 15 << 30)]
    line = advice.idle_gpu_line(nvidia, set(), [], VERSION)
    assert line is not None and "NVIDIA RTX 4090" in line and advice.FIX in line
    assert advice.idle_gpu_line(nvidia, {"cuda"}, [], VERSION) is None  # a CUDA wheel
    assert advice.idle_gpu_line([], set(), [], VERSION) is None
    assert advice.idle_gpu_line([GPU(0, "M3", "metal", 1, 1)], set(), [], VERSION) is None
    vk = layout.Runtime("vulkan-x", "vulkan", VERSION, "", "", "m.so", "", 0)
    assert advice.idle_gpu_line(radeon, set(), [vk], VERSION) is None
    stale = layout.Runtime("vulkan-y", "vulkan", "0.0.1", "", "", "m.so", "", 0)
    assert advice.idle_gpu_line(radeon, set(), [stale], VERSION) is not None
    said: list[str] = []
    advice.say_once(lambda: radeon, said.append)
    advice.say_once(lambda: radeon, said.append)
    assert len(said) == 1 and "AMD Radeon RX 7900" in said[0]
    layout.select("cpu")  # the CPU, chosen: nothing to say
    advice.say_once(lambda: nvidia, said.append)
    assert len(said) == 1


def test_a_runtime_loads_only_its_own_checked_module(cli: CLI, home: Path, tmp_path: Path) -> None:
    """The exact runtime's library was loaded unhashed when its size and mtime matched the
    record, and runtime.json's `module` could name a file outside runtimes/ (issue 76): it is
    hashed at every load, and only a file inside the runtime's folder is loaded, links
    resolved."""
    from localrun.runtimes import exact

    name = f"exact-{VERSION}"
    module = fake_runtime(home, name, b"\x7fELF exact" * 100, backend="exact")
    record_file = module.parent / "runtime.json"
    record = {**json.loads(record_file.read_text()), "cpu": exact.cpu_identity()}
    record_file.write_text(json.dumps(record))
    # The same size and mtime as recorded, other bytes.
    st = module.stat()
    module.write_bytes(b"\x7fELF other" * 100)
    os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert module.stat().st_mtime_ns == record["stamp"][1]
    shown = info(cli)
    assert shown["exact"] is None and "changed since install" in shown["exact_warning"], shown

    outside = tmp_path / "outside" / "libggml-cpu.so"
    outside.parent.mkdir()
    outside.write_bytes(b"\x7fELF outside")
    st = outside.stat()
    for named in ("../../../outside/libggml-cpu.so", str(outside), "link.so"):
        if named == "link.so":
            (module.parent / named).symlink_to(outside)
        record = {**record, "module": named, "sha256": hash_file(outside),
                  "stamp": [st.st_size, st.st_mtime_ns]}  # fmt: skip
        record_file.write_text(json.dumps(record))
        shown = info(cli)
        assert shown["exact"] is None and "outside its folder" in shown["exact_warning"], shown

    # A GPU runtime's record is held to its folder the same way.
    vulkan = fake_runtime(home, f"vulkan-{VERSION}", b"\x7fELF vulkan")
    gpu_record = json.loads((vulkan.parent / "runtime.json").read_text())
    gpu_record.update(module=str(outside), sha256=hash_file(outside), stamp=record["stamp"])
    (vulkan.parent / "runtime.json").write_text(json.dumps(gpu_record))
    shown = info(cli, {"LOCALRUN_RUNTIME": f"vulkan-{VERSION}"})
    assert shown["runtime"] == "built-in" and "outside its folder" in shown["runtime_warning"]
