"""llama.cpp for GGUF exports: its own converters and a libllama built from source, fetched on first use.

Nothing of llama.cpp lives in this repository. PyPI's `llama-cpp-python` source distribution (pinned by
version and sha256 below) carries `vendor/llama.cpp` with `convert_hf_to_gguf.py`,
`convert_lora_to_gguf.py`, its `gguf-py` and the C++ sources, plus the `llama_cpp` ctypes bindings for
exactly that llama.cpp. On first use the sdist is downloaded with pip (from the configured package index),
checked, unpacked and only the `llama` shared library is built with cmake (about 4 minutes on two
cores, once per machine); quantizing (llama_model_quantize) and running a GGUF for the parity check go
through the bindings loaded against that library, so no llama.cpp tool binaries are needed.

Where: $TUNEBOARD_LLAMACPP_DIR, else ~/.cache/tuneboard/llamacpp (outside any repository; a few hundred
MB). Building needs cmake and a C++ compiler; when they are missing the export fails saying so.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import Any

VERSION = "0.3.36"
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
QUANT_FTYPES = {"f16": 1, "q8_0": 7, "q4_k_m": 15}  # llama_ftype values of llama.h
_LOCK = threading.Lock()


class ToolchainError(RuntimeError):
    """llama.cpp could not be fetched or built; the message says what to install or where to look."""


def root_dir() -> Path:
    """Where the sdist is unpacked and built."""
    env = os.environ.get("TUNEBOARD_LLAMACPP_DIR")
    return Path(env) if env else Path.home() / ".cache" / "tuneboard" / "llamacpp"


def source_dir(root: Path | None = None) -> Path:
    """The unpacked sdist (holds llama_cpp/ and vendor/llama.cpp/)."""
    return (root or root_dir()) / f"llama_cpp_python-{VERSION}"


def vendor_dir(root: Path | None = None) -> Path:
    """vendor/llama.cpp of the sdist: the converters and the C++ sources."""
    return source_dir(root) / "vendor" / "llama.cpp"


def build_dir(root: Path | None = None) -> Path:
    return (root or root_dir()) / "build"


def lib_dir(root: Path | None = None) -> Path:
    """Where cmake puts libllama and libggml*."""
    return build_dir(root) / "bin"


def _stamp(root: Path) -> Path:
    return build_dir(root) / f"tuneboard-built-{VERSION}.ok"


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks (the sdist's check here, the export cards' file list)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run(argv: list[str], log: Path, what: str, timeout: float) -> None:
    with log.open("ab") as out:
        try:
            proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False)
        except FileNotFoundError as exc:
            missing = exc.filename
            raise ToolchainError(f"{what}: {missing} is not installed; install it and export again") from exc
        except subprocess.TimeoutExpired as exc:
            raise ToolchainError(f"{what} took longer than {timeout:g} s; see {log}") from exc
    if proc.returncode != 0:
        raise ToolchainError(f"{what} failed (exit {proc.returncode}); see {log}")


def fetch_source(root: Path | None = None) -> Path:
    """The unpacked sdist, downloaded with pip and checked against SDIST_SHA256 when missing."""
    root = root or root_dir()
    src = source_dir(root)
    if (src / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py").is_file():
        return src
    root.mkdir(parents=True, exist_ok=True)
    archive = root / SDIST
    if not archive.is_file():
        argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        argv += [f"llama-cpp-python=={VERSION}", "-d", str(root)]
        _run(argv, root / "fetch.log", f"downloading llama-cpp-python {VERSION}", 900)
    if file_sha256(archive) != SDIST_SHA256:
        archive.unlink(missing_ok=True)
        raise ToolchainError(f"{SDIST} does not have the expected sha256; it was removed, export again")
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=root))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")  # no links or paths outside tmp
        shutil.rmtree(src, ignore_errors=True)
        os.replace(tmp / src.name, src)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return src


def ensure_built(root: Path | None = None, jobs: int = 2) -> Path:
    """The directory holding libllama, built from the sdist's vendor/llama.cpp on first use."""
    root = root or root_dir()
    with _LOCK:
        if _stamp(root).is_file():
            return lib_dir(root)
        vendor = fetch_source(root) / "vendor" / "llama.cpp"
        build = build_dir(root)
        build.mkdir(parents=True, exist_ok=True)
        log = build / "tuneboard-build.log"
        configure = ["cmake", "-S", str(vendor), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"]
        configure += ["-DBUILD_SHARED_LIBS=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"]
        configure += ["-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_OPENSSL=OFF"]
        if shutil.which("ninja"):
            configure += ["-G", "Ninja"]
        _run(configure, log, "configuring llama.cpp with cmake", 600)
        _run(
            ["cmake", "--build", str(build), "-j", str(jobs), "--target", "llama"],
            log,
            "building llama.cpp",
            3600,
        )
        if not any(lib_dir(root).glob("libllama.*")):
            raise ToolchainError(f"the llama.cpp build left no libllama in {lib_dir(root)}; see {log}")
        _stamp(root).write_text(VERSION, encoding="utf-8")
        return lib_dir(root)


def bindings(root: Path | None = None) -> Any:
    """The sdist's `llama_cpp` package, loaded against the libllama built here (builds it if needed)."""
    root = root or root_dir()
    libs = ensure_built(root)
    os.environ["LLAMA_CPP_LIB_PATH"] = str(libs)
    src = str(source_dir(root))
    if src not in sys.path:
        sys.path.insert(0, src)
    import llama_cpp  # the sdist's pure-python bindings (ctypes), not an installed wheel

    found = Path(llama_cpp.__file__).resolve()
    if not found.is_relative_to(Path(src).resolve()):
        raise ToolchainError(
            f"another llama_cpp package is installed ({found}); the export needs the one of "
            f"llama-cpp-python {VERSION} it builds (uninstall the other one or run the export elsewhere)"
        )
    return llama_cpp
