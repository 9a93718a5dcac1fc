"""Build and load the CUDA sources in ``csrc/`` at first use.

Why this shape (see docs/design.md, "Layout"):

- Nothing compiles at ``pip install``. The sources ship as package data (``seqzoo.csrc``) and are compiled by
  ``nvcc`` the first time an op asks for them, for exactly the GPU in the machine.
- The kernels export a plain C ABI (``extern "C"`` launchers taking raw pointers, sizes, strides and a
  ``cudaStream_t``; see ``csrc/README.md``) and are loaded with :mod:`ctypes`. No torch C++ headers are
  involved, so a new torch release can never break a built library, and a library built once serves every
  torch version.
- Built libraries live in a cache (``$SEQZOO_CACHE/csrc``, default ``~/.cache/seqzoo/csrc``), one folder
  per architecture, named by a hash of everything that decides the binary: the source, every header in
  ``csrc/`` it could include, the nvcc version, the flags and the architecture. Editing a kernel or
  upgrading CUDA therefore builds a new file instead of loading a stale one; old files are left for the user
  to delete (another process may still have them loaded).
- Builds are atomic: nvcc writes a temporary file in the cache folder and ``os.replace`` moves it into
  place, so a process that races another one loads either nothing or a complete library, never half of one.
  Two processes may both compile; the second rename wins and the results are identical.

Entry points:

    lib = load_library("selective_scan")           # ctypes.CDLL, built for this GPU on first use
    compile_source(path, "sm_90", compile_only=True)  # what CI runs where no GPU exists
    python -m seqzoo.ops._csrc --compile-all [--arch sm_90]

Within one process a library is built and loaded once per (name, arch, cache folder); the source is read as
it was at that first load (edits made while a process runs take effect in the next process).
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import hashlib
import importlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger("seqzoo.ops")

SOURCE_SUFFIX = ".cu"
# Anything a .cu file could #include from csrc/; all of them feed the cache key, since working out which
# headers a source really includes would need the preprocessor (and a wrong guess loads a stale library).
HEADER_SUFFIXES = (".cuh", ".h", ".hpp", ".inl")
NVCC_FLAGS = ("-O3", "-std=c++17", "-lineinfo", "-Xcompiler", "-fPIC")
# The architecture CI compiles for when it has no GPU to ask: the H100 the benchmarks run on.
DEFAULT_COMPILE_ARCH = "sm_90"
# Looked at after $CUDA_HOME, $CUDA_PATH and PATH: containers often install the toolkit here without
# putting it on PATH.
FALLBACK_NVCC_DIRS: tuple[str, ...] = ("/usr/local/cuda/bin",)
# Bump when the build recipe changes in a way the hashed inputs cannot see (e.g. the naming scheme).
CACHE_FORMAT = "1"
# How much of nvcc's output a compilation error quotes.
ERROR_TAIL_LINES = 40

_load_lock = threading.Lock()
_loaded: dict[tuple[str, str, str], ctypes.CDLL] = {}


# -- where things are --------------------------------------------------------------------------------------


def csrc_dir() -> Path:
    """The folder holding the CUDA sources (the ``seqzoo.csrc`` package)."""
    package = importlib.import_module("seqzoo.csrc")
    # __file__ rather than importlib.resources: nvcc needs real files on disk, and a zipped install (where
    # resources would hand back a traversable that is not a path) could not compile anyway.
    return Path(package.__file__).resolve().parent


def list_sources(directory: Path | None = None) -> list[Path]:
    """Every ``*.cu`` file in ``csrc/`` (or ``directory``), sorted by name."""
    directory = csrc_dir() if directory is None else Path(directory)
    return sorted(p for p in directory.glob(f"*{SOURCE_SUFFIX}") if p.is_file())


def cache_dir() -> Path:
    """Where built libraries go: ``$SEQZOO_CACHE/csrc``, else ``${XDG_CACHE_HOME:-~/.cache}/seqzoo/csrc``."""
    root = os.environ.get("SEQZOO_CACHE")
    if root:
        return Path(root).expanduser() / "csrc"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "seqzoo" / "csrc"


# -- the toolchain and the target ------------------------------------------------------------------------


def find_nvcc() -> str:
    """The path of ``nvcc``: ``$CUDA_HOME/bin``, ``$CUDA_PATH/bin``, PATH, then ``/usr/local/cuda/bin``."""
    candidates: list[Path] = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(var)
        if root:
            candidates.append(Path(root) / "bin" / "nvcc")
    on_path = shutil.which("nvcc")
    if on_path:
        candidates.append(Path(on_path))
    candidates += [Path(d) / "nvcc" for d in FALLBACK_NVCC_DIRS]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    looked = ", ".join(str(c) for c in candidates) or "nowhere else"
    raise RuntimeError(
        "seqzoo: nvcc (the CUDA compiler) was not found, so the CUDA kernels in csrc/ cannot be built "
        f"(looked in $CUDA_HOME/bin, $CUDA_PATH/bin and PATH: {looked}). Install the CUDA toolkit and put "
        "its bin/ folder on PATH or set CUDA_HOME to its root; or pick another backend "
        "(backend='triton' or 'torch')."
    )


@functools.cache
def nvcc_version(nvcc: str) -> str:
    """The full ``nvcc --version`` text (it names the release and the build, both of which change codegen)."""
    try:
        done = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60)
    except OSError as e:
        raise RuntimeError(f"seqzoo: could not run {nvcc} --version: {e}") from e
    if done.returncode != 0:
        raise RuntimeError(f"seqzoo: {nvcc} --version failed: {_tail(done.stderr or done.stdout)}")
    return done.stdout.strip()


_ARCH_RE = re.compile(r"^(?:sm_|compute_)?(\d+)(?:\.(\d+))?([a-z]?)$")


def normalize_arch(arch) -> str:
    """``"sm_90"``, ``"90"``, ``"9.0"``, ``90``, ``(9, 0)`` or ``"compute_90"`` -> ``"sm_90"``.

    Arch-specific targets keep their suffix: ``"sm_90a"`` -> ``"sm_90a"``.
    """
    if isinstance(arch, tuple | list) and len(arch) == 2:
        return f"sm_{int(arch[0])}{int(arch[1])}"
    if isinstance(arch, int) and not isinstance(arch, bool):
        return f"sm_{arch}"
    match = _ARCH_RE.match(str(arch).strip().lower()) if isinstance(arch, str) else None
    if match is None:
        raise ValueError(f"seqzoo: arch must look like 'sm_90', '90', '9.0' or (9, 0), got {arch!r}")
    major_or_all, minor, suffix = match.groups()
    number = f"{major_or_all}{minor}" if minor is not None else major_or_all
    return f"sm_{number}{suffix}"


def current_arch() -> str:
    """The architecture of the current CUDA device, e.g. ``"sm_90"`` on an H100."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(
            "seqzoo: no CUDA GPU is visible (torch.cuda.is_available() is False), so there is no GPU "
            "architecture to build the csrc/ kernels for. Run on a machine with a GPU, or pass an "
            "architecture explicitly (load_library(name, arch='sm_90')) to build without one."
        )
    major, minor = torch.cuda.get_device_capability()
    return f"sm_{major}{minor}"


def _gencode(arch: str) -> list[str]:
    number = arch.removeprefix("sm_")
    # Real code for exactly this GPU only: the cache is per-architecture, so embedding PTX for others
    # would only lengthen every build.
    return ["-gencode", f"arch=compute_{number},code=sm_{number}"]


# -- the cache key -----------------------------------------------------------------------------------------


def source_digest(source: Path, arch: str, nvcc: str | None = None) -> str:
    """Hex digest of everything that decides the binary built from ``source`` for ``arch``."""
    source = Path(source)
    arch = normalize_arch(arch)
    h = hashlib.sha256()

    def feed(label: str, data: bytes) -> None:
        # Length-prefixed so that moving bytes between two fields cannot produce the same digest.
        h.update(f"{label}:{len(data)}:".encode())
        h.update(data)

    feed("format", CACHE_FORMAT.encode())
    feed("arch", arch.encode())
    feed("flags", " ".join(NVCC_FLAGS).encode())
    feed("nvcc", nvcc_version(nvcc or find_nvcc()).encode())
    feed("source", source.read_bytes())
    root = source.parent
    headers = sorted(p for p in root.rglob("*") if p.suffix in HEADER_SUFFIXES and p.is_file())
    for header in headers:
        feed("header " + header.relative_to(root).as_posix(), header.read_bytes())
    return h.hexdigest()


def library_path(source: Path | str, arch, *, nvcc: str | None = None) -> Path:
    """Where the library built from ``source`` (a path, or a name in ``csrc/``) for ``arch`` is cached."""
    source = _source_path(source)
    arch = normalize_arch(arch)
    digest = source_digest(source, arch, nvcc)
    return cache_dir() / arch / f"{source.stem}-{digest[:20]}.so"


def _source_path(source: Path | str) -> Path:
    if isinstance(source, Path) or os.sep in str(source) or str(source).endswith(SOURCE_SUFFIX):
        return Path(source)
    return csrc_dir() / f"{source}{SOURCE_SUFFIX}"


# -- building and loading ----------------------------------------------------------------------------------


def compile_source(
    path: Path | str,
    arch,
    output: Path | str | None = None,
    *,
    compile_only: bool = False,
    nvcc: str | None = None,
) -> Path | None:
    """Compile one ``.cu`` file with nvcc for ``arch``; raise RuntimeError with nvcc's output on failure.

    Shared library (default): written to ``output`` (default: its cache path) through a temporary file in
    the same folder and ``os.replace``, so no reader ever sees a partial file. Returns the path.

    ``compile_only``: ``nvcc -c`` to an object file, the check CI runs without a GPU. The object goes to
    ``output`` when given (its path is returned), else to a temporary folder that is removed (returns None).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"seqzoo: CUDA source {path} does not exist")
    arch = normalize_arch(arch)
    nvcc = nvcc or find_nvcc()
    base = [nvcc, *NVCC_FLAGS, *_gencode(arch), "-I", str(path.parent)]

    if compile_only:
        if output is not None:
            output = Path(output)
            output.parent.mkdir(parents=True, exist_ok=True)
            _run_nvcc([*base, "-c", str(path), "-o", str(output)], path, arch)
            return output
        with tempfile.TemporaryDirectory(prefix="seqzoo-nvcc-") as tmp:
            _run_nvcc([*base, "-c", str(path), "-o", str(Path(tmp) / f"{path.stem}.o")], path, arch)
        return None

    output = Path(output) if output is not None else library_path(path, arch, nvcc=nvcc)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.stem}.", suffix=".tmp")
    os.close(fd)
    try:
        _run_nvcc([*base, "-shared", str(path), "-o", tmp_name], path, arch)
        os.chmod(tmp_name, 0o755)
        os.replace(tmp_name, output)
    finally:
        # Gone already after a successful replace; removes the partial file after a failure.
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
    return output


def _run_nvcc(cmd: list[str], source: Path, arch: str) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise RuntimeError(f"seqzoo: could not run nvcc ({cmd[0]}): {e}") from e
    if done.returncode != 0:
        output = "\n".join(s for s in (done.stdout.strip(), done.stderr.strip()) if s)
        raise RuntimeError(
            f"seqzoo: nvcc failed to compile {source.name} for {arch} (exit {done.returncode}).\n"
            f"command: {' '.join(cmd)}\n"
            f"nvcc output (last {ERROR_TAIL_LINES} lines):\n{_tail(output)}"
        )


def _tail(text: str, lines: int = ERROR_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def load_library(name: str, arch=None) -> ctypes.CDLL:
    """The ctypes handle of ``csrc/<name>.cu``, built for ``arch`` (default: the current GPU) on first use.

    The caller sets ``argtypes``/``restype`` on the functions it uses (see csrc/README.md). Raises
    RuntimeError when nvcc is missing, when ``arch`` is None and no GPU is visible, or when nvcc fails.
    """
    # The architecture first: without a GPU there is nothing to do, whatever the toolchain.
    arch = current_arch() if arch is None else normalize_arch(arch)
    source = csrc_dir() / f"{name}{SOURCE_SUFFIX}"
    if not source.is_file():
        known = ", ".join(p.stem for p in list_sources()) or "none"
        raise ValueError(f"seqzoo: no CUDA source csrc/{name}{SOURCE_SUFFIX} (available: {known})")
    key = (name, arch, str(cache_dir()))
    with _load_lock:
        lib = _loaded.get(key)
        if lib is not None:
            return lib
        nvcc = find_nvcc()
        target = library_path(source, arch, nvcc=nvcc)
        if not target.is_file():
            log.warning(
                "seqzoo: compiling csrc/%s for %s (first use; cached as %s)", source.name, arch, target
            )
            t0 = time.perf_counter()
            compile_source(source, arch, target, nvcc=nvcc)
            log.info("seqzoo: built %s in %.1f s", target.name, time.perf_counter() - t0)
        try:
            lib = ctypes.CDLL(str(target))
        except OSError as e:
            raise RuntimeError(
                f"seqzoo: built {target} but could not load it: {e}. Delete it to force a rebuild."
            ) from e
        _loaded[key] = lib
        return lib


def clear_loaded() -> None:
    """Forget the in-process handles, so the next load_library goes through the disk cache again (tests)."""
    with _load_lock:
        _loaded.clear()


# -- command line ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m seqzoo.ops._csrc",
        description="Compile the CUDA sources in csrc/ with nvcc (compile only: no GPU needed).",
    )
    parser.add_argument("--compile-all", action="store_true", help="compile every csrc/*.cu with nvcc -c")
    parser.add_argument(
        "--arch", default=DEFAULT_COMPILE_ARCH, help=f"target architecture (default {DEFAULT_COMPILE_ARCH})"
    )
    args = parser.parse_args(argv)
    if not args.compile_all:
        parser.print_help()
        return 2
    arch = normalize_arch(args.arch)
    sources = list_sources()
    if not sources:
        print(f"no .cu files in {csrc_dir()}: nothing to compile")
        return 0
    try:
        nvcc = find_nvcc()
        version = nvcc_version(nvcc).splitlines()[-1]
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"compiling {len(sources)} file(s) for {arch} with {nvcc} ({version})")
    failures: list[tuple[Path, str]] = []
    width = max(len(p.name) for p in sources)
    for source in sources:
        t0 = time.perf_counter()
        try:
            compile_source(source, arch, compile_only=True, nvcc=nvcc)
            status = "OK"
        except RuntimeError as e:
            status = "FAILED"
            failures.append((source, str(e)))
        print(f"{status:<7}{source.name:<{width}}  {time.perf_counter() - t0:6.1f} s", flush=True)
    for source, message in failures:
        print(f"\n--- {source.name} ---\n{message}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} of {len(sources)} file(s) failed to compile", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
