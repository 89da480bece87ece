"""GPU runtimes (`localrun runtime`) without a build: selection, damaged and mismatched runtimes,
the CUDA architecture list, the exact runtime's patch and source handling, and what is said
when a GPU sits idle."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from localrun.errors import RuntimeBuildError, ToolchainError
from localrun.runtimes import patchset, toolchain
from localrun.runtimes.source import bindings_version
from localrun.store.blobs import hash_file

from support import PATIENCE_S, ROOT
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
    assert_one_line_error(refused, "expected cuda, vulkan, auto, exact or rpc")


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
        json.dumps({**record, "cpu": patchset.cpu_identity(), "sha256": "0" * 64, "stamp": [0, 0]})
    )
    assert [r.name for r in exact.installed(VERSION)] == [f"exact-{VERSION}"]
    built = info(cli)
    assert built["exact"] is None and "damaged" in built["exact_warning"], built


def test_the_exact_runtime_is_listed_in_use_and_help_names_it(cli: CLI, home: Path) -> None:
    """`runtime list` showed the exact runtime every process loads with an empty SELECTED
    column, and `--help` called `runtime` GPU runtimes alone."""

    module = fake_runtime(home, f"exact-{VERSION}", b"\x7fELF exact" * 100, backend="exact")
    record = json.loads((module.parent / "runtime.json").read_text())
    (module.parent / "runtime.json").write_text(
        json.dumps({**record, "cpu": patchset.cpu_identity()})
    )

    def row(env: dict[str, str] | None = None) -> list[str]:
        listed = cli("runtime", "list", env=env)
        line = next(li for li in listed.stdout.splitlines() if li.startswith("exact-"))
        return re.split(r"\s{2,}", line.strip())

    header = cli("runtime", "list").stdout.splitlines()[0].split()
    assert row()[header.index("SELECTED")] == "yes (exact)"
    listed = json.loads(cli("runtime", "list", "--json").stdout)
    assert [r["selected"] for r in listed["runtimes"]] == [True]
    assert not any("yes" in c for c in row({"LOCALRUN_EXACT": "off"}))  # no process loads it
    module.write_bytes(b"\x7fELF damaged" * 100)  # nor one whose library changed
    assert not any("yes" in c for c in row())
    helped = cli("--help").stdout
    assert re.search(r"runtime\s.*GPU runtimes.*exact", " ".join(helped.split())), helped


def write_exact_source(tree: Path) -> tuple[str, ...]:
    """A source whose files hold exactly the lines the exact runtime's patches change (each
    hunk's context and removed lines, hunk after hunk, a filler line between); their paths."""
    from localrun.runtimes import patching

    blocks: dict[str, list[tuple[int, list[str]]]] = {}
    for path in patchset.patch_files():
        for fp in patching.parse(path.read_text(), path.name).files:
            for hunk in fp.hunks:
                old = [line[1:] for line in hunk.lines if line[0] in " -"]
                blocks.setdefault(fp.path, []).append((hunk.old_start, old))
    for name, found in blocks.items():
        lines = ["top"]
        for _, old in sorted(found, key=lambda block: block[0]):
            lines += [*old, "// filler"]
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text("\n".join([*lines, "bottom", ""]))
    return tuple(blocks)


def _tree(tree: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(tree)): p.read_bytes() for p in sorted(tree.rglob("*")) if p.is_file()
    }


def test_the_exact_patches_apply_once_and_name_the_hunk_that_does_not(tmp_path: Path) -> None:
    """The patches (runtimes/patches/) applied to a source holding the lines they change: the
    kernel's files copied beside ops.cpp, every hunk's new lines in; applied again, nothing
    changes (each is found applied). A source where one hunk's lines moved on is refused with
    one line naming the patch, the file and the hunk, and that patch writes nothing."""
    from localrun.runtimes import patching

    names = write_exact_source(tmp_path)
    assert "ggml/src/ggml-cpu/llamafile/sgemm.cpp" in names  # the weights' products too
    assert "ggml/src/ggml-cpu/arch/x86/quants.c" in names  # x86's K-quant dot products
    pristine = _tree(tmp_path)
    outcomes = patchset.patch_source(tmp_path)
    assert [o.state for o in outcomes] == ["applies"] * len(patchset.patch_files())
    once = _tree(tmp_path)
    folder = tmp_path / patchset.GGML_CPU
    for kernel in patchset.kernel_files():
        assert (folder / kernel.name).read_bytes() == kernel.read_bytes()
    ops = (folder / "ops.cpp").read_text()
    assert "ggml_compute_forward_flash_attn_ext_exact(params, dst," in ops
    for path in patchset.patch_files():
        for fp in patching.parse(path.read_text(), path.name).files:
            added = [line[1:] for hunk in fp.hunks for line in hunk.lines if line[0] == "+"]
            assert all(line in once[fp.path].decode() for line in added), (path.name, fp.path)
    outcomes = patchset.patch_source(tmp_path)  # again: every patch is there, nothing is written
    assert [o.state for o in outcomes] == ["present"] * len(patchset.patch_files())
    assert _tree(tmp_path) == once

    for name, body in pristine.items():
        (tmp_path / name).write_bytes(body)
    quants = tmp_path / patchset.GGML_CPU / "arch/x86/quants.c"
    text = quants.read_text()
    moved = "        const float d = y[i].d * GGML_CPU_FP16_TO_FP32(x[i].d);\n"
    quants.write_text(text.replace(moved, moved.replace("y[i].d", "y[i].dd"), 1))
    before = quants.read_bytes()
    with pytest.raises(RuntimeBuildError) as refused:
        patchset.patch_source(tmp_path)
    message = refused.value.message
    assert "\n" not in message and refused.value.hint and "0.3" in refused.value.hint
    assert message.startswith(
        "patch 0005-ggml-cpu-x86-k-quant-dot-products-sum-as-the-tiled-matmul.patch does not "
        "apply to this llama.cpp: hunk 2 of ggml/src/ggml-cpu/arch/x86/quants.c (patch line "
    ), message
    assert quants.read_bytes() == before  # nothing of the refused patch written
    sgemm = tmp_path / patchset.GGML_CPU / "llamafile/sgemm.cpp"
    assert sgemm.read_bytes() == once[str(sgemm.relative_to(tmp_path))]  # the earlier ones were


def test_a_hunk_goes_where_its_lines_are_nearest_its_line_and_never_twice() -> None:
    """patching.apply_lines as `patch -p1` with no fuzz: the same lines in two functions take
    the hunk where its header points, moved by the earlier hunks' offset; reversed, it is
    undone; lines that are nowhere fail it, with fuzz only its outer context may differ."""
    from localrun.runtimes import patching

    text = "void f() {\n    acc = 1;\n}\nvoid g() {\n    acc = 1;\n}\n"
    diff = patching.diff("x.c", text, text.replace("g() {\n    acc = 1;", "g() {\n    acc = 2;"))
    assert "@@ -2,5 +2,5 @@ void f() {" in diff and diff.endswith("\n }\n")
    hunks = patching.parse("header\n---\n" + diff).files[0].hunks
    shifted = ("// a line upstream added\n" + text).split("\n")[:-1]
    out, placed = patching.apply_lines(shifted, hunks)
    assert "\n".join(out) + "\n" == "// a line upstream added\n" + text.replace(
        "g() {\n    acc = 1;", "g() {\n    acc = 2;"
    )
    assert [(p.line, p.offset, p.fuzz) for p in placed] == [(3, 1, 0)]
    assert patching.apply_lines(out, hunks, reverse=True)[0] == shifted
    with pytest.raises(patching.HunkFailed):
        patching.apply_lines(out, hunks)  # applied: its old lines are gone
    edited = "\n".join(shifted).replace("acc = 1;", "acc = 1; // f", 1).split("\n")
    with pytest.raises(patching.HunkFailed):
        patching.apply_lines(edited, hunks)  # a context line differs: no fuzz, no match
    out, placed = patching.apply_lines(edited, hunks, fuzz=1)
    assert "acc = 1; // f\n}\nvoid g() {\n    acc = 2;" in "\n".join(out)
    assert placed[0].fuzz == 1
    renamed = "\n".join(shifted).replace("void g()", "static void g()").split("\n")
    with pytest.raises(patching.HunkFailed):  # the line beside the change: beyond any fuzz
        patching.apply_lines(renamed, hunks, fuzz=2)


def test_a_source_downloaded_into_a_new_home_leaves_the_home_private(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`runtime install exact` as a newcomer's first command: the home it makes to keep the
    source in is 0700, as every folder of localrun's makes it (`localrun info` then found its
    own folder open to other users)."""
    import stat

    from localrun.errors import ToolchainError
    from localrun.runtimes import source

    def offline(*_: object, **__: object) -> None:
        raise ToolchainError("no index here")

    monkeypatch.setattr(source, "run_pip", offline)
    assert not home.exists()
    with pytest.raises(ToolchainError):
        source._kept_or_downloaded("0.3.36", lambda _: None)
    assert source.sources_folder().is_dir()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


def test_prune_removes_the_source_an_install_kept(cli: CLI) -> None:
    from localrun.runtimes import source

    kept = source.sources_folder() / source.SDIST.format(version="0.3.36")
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"x" * 4096)
    assert source.kept() == [kept]
    pruned = cli("prune")
    assert pruned.code == 0, pruned.stderr
    assert "1 kept llama.cpp source" in pruned.stdout and not kept.exists(), pruned.stdout


def test_a_patch_is_written_again_against_a_source_that_moved(tmp_path: Path) -> None:
    """What scripts/maintenance/upgrade_llama_cpp.py does with a patch that applies only with fuzz:
    the same change, diffed again against the new source, applies there with none."""
    from localrun.runtimes import patching

    (tmp_path / "x.c").write_text("int a;\nvoid g() {\n    acc = 1;\n    done();\n}\n")
    diff = patching.diff("x.c", "int a;\nvoid g() {\n    acc = 1;\n    done();\n}\n",
                         "int a;\nvoid g() {\n    acc = 2;\n    done();\n}\n")  # fmt: skip
    patch = patching.parse("Subject: acc\n---\n" + diff, "0001-acc.patch")
    (tmp_path / "x.c").write_text("int b;\nvoid g() {\n    acc = 1;\n    done();\n}\n")
    assert patching.status(tmp_path, patch).state == "failed"
    fuzzy = patching.status(tmp_path, patch, fuzz=1)
    assert fuzzy.state == "applies" and fuzzy.placed["x.c"][0].fuzz == 1
    again = patching.parse(patching.regenerate(tmp_path, patch, fuzzy), patch.name)
    assert again.header == patch.header and " int b;" in patching.regenerate(tmp_path, patch, fuzzy)
    clean = patching.status(tmp_path, again)
    assert clean.state == "applies" and clean.texts["x.c"] == fuzzy.texts["x.c"]


def test_the_upgrade_script_re_diffs_the_patches_and_names_a_hunk_that_moved(
    tmp_path: Path,
) -> None:
    """scripts/maintenance/upgrade_llama_cpp.py on a release's sdist (here one holding only the
    lines the patches change): each patch applied and written again against it; where upstream
    changed a hunk's lines, that hunk named and the exit status 1."""
    import tarfile

    def sdist(name: str) -> Path:
        top = tmp_path / name / "llama_cpp_python-9.9.9"
        write_exact_source(top / "vendor" / "llama.cpp")
        (top / "vendor/llama.cpp/ggml/CMakeLists.txt").write_text("set(GGML_VERSION_MAJOR 9)\n")
        archive = tmp_path / f"{name}.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(top, arcname=top.name)
        return archive

    def upgrade(archive: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(ROOT / "scripts/maintenance/upgrade_llama_cpp.py"),
             "9.9.9", "--sdist", str(archive), "--work", str(tmp_path / "work"), "--no-build"],
            capture_output=True, text=True, timeout=PATIENCE_S,
        )  # fmt: skip

    done = upgrade(sdist("moved"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("re-diffed") >= 6 and "FAILED" not in done.stdout, done.stdout
    out = tmp_path / "work" / "9.9.9" / "patches"
    assert (out / "BASE").read_text() == "9.9.9\n"
    assert len(list(out.glob("*.patch"))) == 6

    archive = sdist("changed")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    top = next((tmp_path / "x").iterdir())
    quants = top / "vendor/llama.cpp/ggml/src/ggml-cpu/arch/x86/quants.c"
    quants.write_text(quants.read_text().replace("    *s = hsum_float_8(acc);\n", "    *s = 0;\n"))
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(top, arcname=top.name)
    done = upgrade(archive)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED   0005-ggml-cpu-x86-k-quant-dot-products" in done.stdout, done.stdout
    assert "hunk 4 of ggml/src/ggml-cpu/arch/x86/quants.c (patch line " in done.stdout


def test_the_patches_and_kernel_are_package_data() -> None:
    """A wheel carries what `install exact` applies: every patch, BASE and the kernel's files
    match pyproject's package-data."""
    import tomllib

    from localrun.runtimes import exact

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = data["tool"]["setuptools"]["package-data"]["localrun"]
    package = Path(exact.__file__).parent.parent
    shipped = {p for pattern in globs for p in package.glob(pattern)}
    needed = [*patchset.patch_files(), patchset.PATCHES / "BASE", *patchset.kernel_files()]
    needed.append(patchset.HERE / "exact.cmake")  # README's first command gives it to pip
    assert len(patchset.patch_files()) >= 6 and len(patchset.kernel_files()) == 3
    assert [p for p in needed if p not in shipped] == []


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
    tree = build.prepared(plan, work, said.append).tree
    quants = tree / "ggml/src/ggml-cpu/arch/x86/quants.c"
    fresh = quants.read_text()
    assert said and all(name.endswith((".cpp", ".c", ".h", ".txt")) for name in names)
    # Another localrun's edit of one function: this version's patch is neither applicable nor
    # applied there.
    new = "    float sumf = 0.0f; // localrun (exact)\n"
    assert new in fresh
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
    ops = tree / patchset.GGML_CPU / "ops.cpp"
    assert f"{patchset.GGML_CPU}/ops.cpp" in names
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
    folder = src.tree / patchset.GGML_CPU
    assert not (folder / "ops.cpp").is_symlink()
    assert "ggml_compute_forward_flash_attn_ext_exact(" in (folder / "ops.cpp").read_text()
    assert all((folder / kernel.name).is_file() for kernel in patchset.kernel_files())
    assert {o.state for o in patchset.patch_source(src.tree)} == {"present"}
    said.clear()
    assert build.prepared(plan, work, said.append).tree == src.tree and not said  # reused
    assert snapshot() == before
    # A link to a folder of the person's outside the source: its files would be patched
    # through it wherever it leads. Refused, before anything is built.
    outside = tmp_path / "my-ggml-cpu"
    (tree / patchset.GGML_CPU).rename(outside)
    (tree / patchset.GGML_CPU).symlink_to(outside)
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

    name = f"exact-{VERSION}"
    module = fake_runtime(home, name, b"\x7fELF exact" * 100, backend="exact")
    record_file = module.parent / "runtime.json"
    record = {**json.loads(record_file.read_text()), "cpu": patchset.cpu_identity()}
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


def _patchset_step(tree: Path, marker: Path) -> subprocess.CompletedProcess[str]:
    """exact.cmake's step as pip's build runs it: localrun from its checkout on PYTHONPATH, and
    no site-packages (-S), as in pip's isolated build environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run(
        [sys.executable, "-S", "-m", "localrun.runtimes.patchset", str(tree), VERSION, str(marker)],
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=PATIENCE_S,
    )


def test_pip_s_build_patches_the_source_with_the_standard_library_alone(tmp_path: Path) -> None:
    """exact.cmake's step patches llama.cpp's source inside pip's build of llama-cpp-python,
    where none of localrun's dependencies are installed: it runs on the standard library, patches
    the tree and writes the marker the installed library then carries. A tree it cannot patch is
    one line on stderr and exit 1, and no marker."""
    tree = tmp_path / "tree"
    write_exact_source(tree)
    marker = tmp_path / patchset.MARKER
    done = _patchset_step(tree, marker)
    assert done.returncode == 0, done.stderr
    assert json.loads(marker.read_text()) == patchset.marker(VERSION)
    assert {o.state for o in patchset.patch_source(tree)} == {"present"}

    bad = tmp_path / "bad"
    (bad / patchset.GGML_CPU).mkdir(parents=True)
    failed = _patchset_step(bad, tmp_path / "none.json")
    assert failed.returncode == 1
    assert len(failed.stderr.splitlines()) == 1 and "does not apply" in failed.stderr
    assert not (tmp_path / "none.json").exists()


def test_a_library_pip_built_exact_is_the_exact_runtime_whatever_the_setting(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """llama_cpp's own libggml-cpu, built by pip with exact.cmake (the marker beside it): it is
    the exact runtime in every process, `runtime list` shows it in use, `runtime install exact`
    builds nothing, and LOCALRUN_EXACT=off says why it cannot be turned off."""
    from localrun.runtimes import exact

    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "libggml-cpu.so").write_bytes(b"\x7fELF" * 100)
    (lib / patchset.MARKER).write_text(json.dumps(patchset.marker(VERSION)))
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", str(lib))
    loaded = exact._preload(None)
    assert loaded.runtime is not None and loaded.warning is None
    assert loaded.runtime.name == f"exact-{VERSION} (built in)"
    assert loaded.runtime.module_path == lib / "libggml-cpu.so"
    monkeypatch.setenv("LOCALRUN_EXACT", "off")
    loaded = exact._preload(None)
    assert loaded.runtime is not None and loaded.warning == exact.OFF_BUILT_IN

    env = {"LLAMA_CPP_LIB_PATH": str(lib)}
    listed = cli("runtime", "list", env=env)
    assert listed.code == 0, listed
    row = next(line for line in listed.stdout.splitlines() if "(built in)" in line)
    assert "yes (exact)" in row and "this CPU" in row, listed.stdout
    again = cli("runtime", "install", "exact", env=env)
    assert again.code == 0 and "nothing to build" in again.stdout, again
    (lib / patchset.MARKER).unlink()  # a stock build: nothing is said to be exact
    assert exact.builtin(lib) is None


def test_workers_without_the_rpc_backend_here_are_a_setup_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a worker's failure (502): no load with workers works until `runtime install rpc`."""
    from localrun.engine.library import native
    from localrun.errors import ConfigError
    from localrun.runtimes import ggml, rpc

    monkeypatch.setenv("LOCALRUN_HOME", str(tmp_path))
    lib = ggml.library(native.libllama_path())
    if lib.ggml_backend_reg_by_name(rpc.NAME.encode()):
        pytest.skip("this llama-cpp-python was built with llama.cpp's RPC backend")
    with pytest.raises(ConfigError, match="RPC backend is not installed here") as caught:
        rpc.registry(lib, native.lc.__version__)
    assert "localrun runtime install rpc" in str(caught.value.hint)
