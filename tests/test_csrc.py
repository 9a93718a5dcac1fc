"""The csrc/ loader: every CUDA source compiles with nvcc (no GPU needed), libraries are built once into a
cache keyed by what decides the binary, and missing pieces (nvcc, a GPU) give errors a user can act on."""

from __future__ import annotations

import ctypes
import shutil

import pytest
import torch

from seqzoo.ops import _csrc

SOURCES = _csrc.list_sources()


@pytest.fixture(scope="module")
def nvcc() -> str:
    try:
        return _csrc.find_nvcc()
    except RuntimeError:
        pytest.skip("nvcc not installed")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQZOO_CACHE", str(tmp_path))
    _csrc.clear_loaded()
    yield tmp_path / "csrc"
    _csrc.clear_loaded()


def test_sources_are_found():
    assert _csrc.csrc_dir().name == "csrc"
    assert "seqzoo_abi.cu" in [p.name for p in SOURCES]


def test_local_includes_ship_with_the_sources():
    # A `#include "x.cuh"` must name a file in csrc/ (nvcc gets -I csrc/) that an installed tree has too:
    # setup.py's package data for seqzoo.csrc covers it. No nvcc needed.
    import fnmatch
    import re
    from pathlib import Path

    setup_py = (Path(__file__).resolve().parents[1] / "setup.py").read_text()
    patterns = re.search(r'"seqzoo\.csrc":\s*\[([^\]]*)\]', setup_py)
    assert patterns, "setup.py ships csrc/ as the package data of seqzoo.csrc"
    globs = re.findall(r'"([^"]+)"', patterns.group(1))
    included = {name for p in SOURCES for name in re.findall(r'^#include "([^"]+)"', p.read_text(), re.M)}
    assert "common.cuh" in included
    for name in included:
        assert (_csrc.csrc_dir() / name).is_file(), f"{name} is included but not in csrc/"
        assert any(fnmatch.fnmatch(name, g) for g in globs), f"{name} is not in seqzoo.csrc's package data"


@pytest.mark.parametrize("source", SOURCES, ids=[p.name for p in SOURCES])
def test_source_compiles_for_sm90(source, nvcc):
    assert _csrc.compile_source(source, "sm_90", compile_only=True, nvcc=nvcc) is None


def test_compile_only_to_an_output(tmp_path, nvcc):
    out = _csrc.compile_source(
        _csrc.csrc_dir() / "seqzoo_abi.cu", "sm_90", tmp_path / "abi.o", compile_only=True
    )
    assert out == tmp_path / "abi.o" and out.stat().st_size > 0


def test_load_library_builds_once_then_reuses_the_cache(cache, monkeypatch, nvcc):
    builds = []
    real_compile = _csrc.compile_source

    def counting_compile(*args, **kwargs):
        builds.append(args)
        return real_compile(*args, **kwargs)

    monkeypatch.setattr(_csrc, "compile_source", counting_compile)

    lib = _csrc.load_library("seqzoo_abi", arch="sm_90")
    assert lib.seqzoo_abi_version() == 1
    # -1 where no driver is installed (this CI machine), the GPU count elsewhere.
    assert lib.seqzoo_cuda_device_count() >= -1
    lib.seqzoo_cuda_error_string.restype = ctypes.c_char_p
    assert lib.seqzoo_cuda_error_string(0) == b"no error"
    assert len(builds) == 1

    built = list(cache.rglob("*"))
    libraries = [p for p in built if p.suffix == ".so"]
    assert len(libraries) == 1 and libraries[0].parent.name == "sm_90"
    assert not [p for p in built if p.name.endswith(".tmp")], "a temporary build file was left behind"
    mtime = libraries[0].stat().st_mtime_ns

    # Same process: the handle is reused without touching the disk.
    assert _csrc.load_library("seqzoo_abi", arch="sm_90") is lib
    # As a new process would: through the disk cache, without compiling again.
    _csrc.clear_loaded()
    again = _csrc.load_library("seqzoo_abi", arch="90")
    assert again.seqzoo_abi_version() == 1
    assert len(builds) == 1
    assert libraries[0].stat().st_mtime_ns == mtime


def test_cache_key_follows_source_headers_arch_and_nvcc(tmp_path, monkeypatch, cache):
    # No nvcc needed: the version is faked.
    version = {"text": "Cuda compilation tools, release 13.0"}
    monkeypatch.setattr(_csrc, "nvcc_version", lambda nvcc: version["text"])
    src = tmp_path / "src"
    src.mkdir()
    cu, header = src / "kernel.cu", src / "common.cuh"
    cu.write_text('#include "common.cuh"\nextern "C" int f(void) { return 1; }\n')
    header.write_text("#pragma once\n")

    def key(arch="sm_90"):
        return _csrc.library_path(cu, arch, nvcc="nvcc")

    first = key()
    assert key() == first, "the key must be deterministic"
    assert first.parent == cache / "sm_90" and first.name.startswith("kernel-")

    cu.write_text('#include "common.cuh"\nextern "C" int f(void) { return 2; }\n')
    after_source = key()
    assert after_source != first
    header.write_text("#pragma once\n#define X 1\n")
    after_header = key()
    assert after_header != after_source
    assert key("sm_80") != after_header and key("sm_80").parent.name == "sm_80"
    version["text"] = "Cuda compilation tools, release 13.1"
    assert key() != after_header


@pytest.mark.parametrize(
    "arch, expected",
    [
        ("sm_90", "sm_90"),
        ("90", "sm_90"),
        ("9.0", "sm_90"),
        (90, "sm_90"),
        ((8, 6), "sm_86"),
        ("compute_80", "sm_80"),
        ("sm_90a", "sm_90a"),
        ("12.0", "sm_120"),
    ],
)
def test_normalize_arch(arch, expected):
    assert _csrc.normalize_arch(arch) == expected


def test_bad_arch_is_a_value_error():
    with pytest.raises(ValueError, match="arch"):
        _csrc.normalize_arch("hopper")


def test_compilation_failure_quotes_nvcc(tmp_path, nvcc):
    broken = tmp_path / "broken.cu"
    broken.write_text('extern "C" int f(void) { return undefined_name; }\n')
    out = tmp_path / "lib" / "broken.so"
    with pytest.raises(RuntimeError, match="nvcc failed to compile broken.cu for sm_90") as info:
        _csrc.compile_source(broken, "sm_90", out)
    assert "undefined_name" in str(info.value)
    assert not list(out.parent.iterdir()), "a failed build must leave nothing behind"


def test_missing_nvcc_is_a_clear_error(tmp_path, monkeypatch, cache):
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    monkeypatch.setattr(_csrc, "FALLBACK_NVCC_DIRS", ())
    with pytest.raises(RuntimeError, match="nvcc") as info:
        _csrc.load_library("seqzoo_abi", arch="sm_90")
    assert "CUDA_HOME" in str(info.value) and "PATH" in str(info.value)


def test_no_gpu_without_arch_is_a_clear_error(monkeypatch, cache):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA GPU") as info:
        _csrc.load_library("seqzoo_abi")
    assert "arch=" in str(info.value)


def test_unknown_library_names_the_sources(cache):
    with pytest.raises(ValueError, match="seqzoo_abi"):
        _csrc.load_library("no_such_kernel", arch="sm_90")


def test_compile_all_cli_without_sources(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(_csrc, "csrc_dir", lambda: tmp_path)
    assert _csrc.main(["--compile-all"]) == 0
    assert "nothing to compile" in capsys.readouterr().out


def test_compile_all_cli_reports_each_file(tmp_path, monkeypatch, capsys, nvcc):
    monkeypatch.setattr(_csrc, "csrc_dir", lambda: tmp_path)
    (tmp_path / "good.cu").write_text('extern "C" int good(void) { return 0; }\n')
    (tmp_path / "bad.cu").write_text("this is not C++\n")
    assert _csrc.main(["--compile-all", "--arch", "sm_90"]) == 1
    captured = capsys.readouterr()
    lines = {line.split()[1]: line.split()[0] for line in captured.out.splitlines()[1:]}
    assert lines == {"bad.cu": "FAILED", "good.cu": "OK"}
    assert "bad.cu" in captured.err
