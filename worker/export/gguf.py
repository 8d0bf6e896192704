"""GGUF files made with llama.cpp's own converters, and their logits from llama.cpp for the parity check.

- model: `convert_hf_to_gguf.py` turns the merged Hugging Face folder into an f16 (or bf16) GGUF; q8_0 and
  q4_k_m are quantized from the f16 file by libllama's llama_model_quantize.
- LoRA: `convert_lora_to_gguf.py` turns the PEFT adapter into a GGUF LoRA against the base folder it was
  merged into; llama.cpp applies it on an f16 GGUF of that base.
Converters run as child processes of this Python (they import torch and their vendored gguf-py); a
refusal (an architecture or shape llama.cpp does not handle) becomes ConversionRefused with llama.cpp's
own last words.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from worker.export import llamacpp
from worker.export.convert_shim import NOTE

CONVERT_TIMEOUT_S = 3600.0


class ConversionRefused(RuntimeError):
    """llama.cpp's converter or loader refused the model; the message quotes it."""


NOTES: list[str] = []  # TUNEBOARD-NOTE lines of the converters run by this process (for the model card)


def _last_words(text: str, lines: int = 2) -> str:
    """The end of a converter's output without traceback frames (those name paths, not reasons)."""
    kept = [
        line.strip()
        for line in text.strip().splitlines()
        if line.strip() and not line.startswith(" ") and not line.startswith("Traceback")
    ]
    return " | ".join(kept[-lines:])


def _convert(argv: list[str], log: Path, what: str) -> None:
    # a Hub token of a later push step is never handed to llama.cpp's scripts
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("TOKEN")}
    proc = subprocess.run(
        [sys.executable, "-m", "worker.export.convert_shim", *argv],
        capture_output=True,
        text=True,
        timeout=CONVERT_TIMEOUT_S,
        check=False,
        env=env,
    )
    with log.open("a", encoding="utf-8") as fh:
        fh.write(f"$ {what} {' '.join(argv[1:])}\n")
        fh.write(proc.stdout + proc.stderr + "\n")
    NOTES.extend(line.split(NOTE, 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith(NOTE))
    if proc.returncode != 0:
        raise ConversionRefused(
            f"llama.cpp's {what} refused this model (exit {proc.returncode}): "
            f"{_last_words(proc.stderr or proc.stdout)}"
        )


def convert_model(hf_dir: Path, out: Path, *, outtype: str, log: Path) -> Path:
    """`hf_dir` (a saved transformers model + tokenizer) as a GGUF of `outtype` (f16, bf16, f32)."""
    script = llamacpp.fetch_source() / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"
    _convert(
        [str(script), str(hf_dir), "--outfile", str(out), "--outtype", outtype],
        log,
        "convert_hf_to_gguf.py",
    )
    if not out.is_file() or out.stat().st_size == 0:
        raise ConversionRefused(f"convert_hf_to_gguf.py exited without writing {out.name}")
    return out


def convert_lora(adapter_dir: Path, base_dir: Path, out: Path, *, log: Path) -> Path:
    """The PEFT adapter in `adapter_dir` as an f16 GGUF LoRA for the base saved in `base_dir`."""
    script = llamacpp.fetch_source() / "vendor" / "llama.cpp" / "convert_lora_to_gguf.py"
    argv = [str(script), str(adapter_dir), "--base", str(base_dir), "--outfile", str(out), "--outtype", "f16"]
    _convert(argv, log, "convert_lora_to_gguf.py")
    if not out.is_file() or out.stat().st_size == 0:
        raise ConversionRefused(f"convert_lora_to_gguf.py exited without writing {out.name}")
    return out


def quantize(source: Path, out: Path, quant: str, threads: int = 2) -> Path:
    """`source` (an f16 GGUF) quantized to `quant` (q8_0, q4_k_m) by libllama's llama_model_quantize.

    Tensors whose rows do not split into the type's blocks (k-quants need multiples of 256) are kept in a
    fallback type by llama.cpp itself, as its llama-quantize tool does.
    """
    lc = _runtime()
    params = lc.llama_model_quantize_default_params()
    params.ftype = llamacpp.QUANT_FTYPES[quant]
    params.nthread = threads
    code = lc.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    if code != 0 or not out.is_file():
        raise ConversionRefused(f"llama.cpp could not quantize {source.name} to {quant} (code {code})")
    return out


_LLAMA_ERRORS: list[str] = []  # llama.cpp's own error lines (its log callback), for plain-words refusals
_CALLBACK: list[Any] = []  # keeps the ctypes callback alive


def _runtime() -> Any:
    """The bindings, with llama.cpp's error log lines collected into _LLAMA_ERRORS (and still printed)."""
    lc = llamacpp.bindings()
    if not _CALLBACK:

        @lc.llama_log_callback
        def collect(level: int, text: bytes, user_data: Any) -> None:
            line = text.decode("utf-8", "replace").strip()
            if "error" in line.lower():  # the level numbering differs between llama.cpp versions
                _LLAMA_ERRORS.append(line.split("error loading model:", 1)[-1].strip())
                print(line, file=sys.stderr, flush=True)

        _CALLBACK.append(collect)
        lc.llama_log_set(collect, ctypes.c_void_p(0))
    return lc


def gguf_logits(
    model_path: Path,
    sequences: Sequence[list[int]],
    starts: Sequence[int],
    *,
    lora_path: Path | None = None,
    threads: int = 2,
) -> list[Any]:
    """llama.cpp's logits over each token sequence (from its start position on), the file run as is."""
    import numpy as np

    lc = _runtime()
    n_ctx = max(len(s) for s in sequences) + 8
    try:
        llm = lc.Llama(
            model_path=str(model_path),
            lora_path=str(lora_path) if lora_path else None,
            n_ctx=n_ctx,
            n_batch=n_ctx,
            logits_all=True,
            n_threads=threads,
            verbose=False,
            seed=0,
        )
    except (ValueError, RuntimeError) as exc:
        said = [e for e in _LLAMA_ERRORS if e and "failed to load model" not in e][-2:]
        reason = " ".join("; ".join(said).split()) if said else str(exc).split(":")[0]
        raise ConversionRefused(
            f"llama.cpp converted the model but refuses to load {model_path.name}: {reason} (llama.cpp "
            "does not support this model as it is shaped; the merged export does not depend on llama.cpp)"
        ) from exc
    out = []
    try:
        for seq, start in zip(sequences, starts, strict=True):
            llm.reset()
            llm.eval(list(seq))
            out.append(np.array(llm.scores[start : len(seq)], dtype=np.float32))
    finally:
        llm.close()
    return out


def read_metadata(path: Path) -> dict[str, Any]:
    """A few header fields of a GGUF (architecture, file type, tensors), read with the sdist's gguf-py."""
    gguf_py = str(llamacpp.fetch_source() / "vendor" / "llama.cpp" / "gguf-py")
    if gguf_py not in sys.path:
        sys.path.insert(0, gguf_py)
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields: dict[str, Any] = {"tensors": len(reader.tensors)}
    for key in ("general.architecture", "general.file_type", "general.type", "adapter.type"):
        field = reader.get_field(key)
        if field is not None:
            fields[key] = field.contents()
    return fields


def tokenizer_matches(model_path: Path, tokenizer: Any, texts: Sequence[str]) -> bool:
    """Whether llama.cpp tokenizes each (chat-templated) text into the same ids as the run's tokenizer."""
    lc = _runtime()
    llm = lc.Llama(model_path=str(model_path), vocab_only=True, verbose=False)
    try:
        for text in texts:
            ours = tokenizer(text, add_special_tokens=False)["input_ids"]
            theirs = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            if list(ours) != list(theirs):
                return False
        return True
    finally:
        llm.close()
