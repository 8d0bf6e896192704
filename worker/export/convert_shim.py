"""`python -m worker.export.convert_shim SCRIPT ARGS...`: run a llama.cpp converter with one named fallback.

llama.cpp's converters recognise a BPE tokenizer's pre-tokenizer by the hash of how it splits a test
string, and refuse any tokenizer whose hash they do not list; a small vocabulary (a preset, or any model
with a tokenizer trained by its owner) always has a new hash. When, and only when, that lookup fails and
the tokenizer.json declares exactly GPT-2's pre-tokenization (ByteLevel with its regex, no normalizer),
this shim answers "gpt-2", llama.cpp's name for that same pre-tokenizer, and says so on stderr
(TUNEBOARD-NOTE, copied into the model card). Any other unknown tokenizer is refused as before. The GGUF
parity check then tokenizes the held-out prompts with llama.cpp and compares the ids, so a wrong answer
here cannot pass unnoticed.

A byte-level BPE with no merges at all (every byte is a token: the presets' tokenizers) cannot be written
either: GGUF stores no empty arrays and llama.cpp refuses a BPE vocabulary without merges. For exactly
that case the shim writes one merge whose result is not in the vocabulary (the byte-level symbols of bytes
0x00 and 0x01): llama.cpp then falls back to the single bytes, so no tokenization changes (the parity
check's token-id comparison proves it). The converter itself runs unchanged (runpy) from the sdist.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path
from typing import Any

NOTE = "TUNEBOARD-NOTE:"
NOOP_MERGE = "\u0100 \u0101"  # GPT-2's byte-level symbols of bytes 0x00 and 0x01


def declared_gpt2_pretokenizer(model_dir: Path) -> bool:
    """Whether model_dir/tokenizer.json is a byte-level BPE with GPT-2's regex split and no normalizer."""
    try:
        data = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    pre = data.get("pre_tokenizer") or {}
    model = data.get("model") or {}
    return (
        model.get("type") == "BPE"
        and data.get("normalizer") is None
        and pre.get("type") == "ByteLevel"
        and pre.get("use_regex", True) is True
        and pre.get("add_prefix_space", False) is False
    )


def main(argv: list[str]) -> None:
    script = Path(argv[0]).resolve()
    sys.path.insert(0, str(script.parent))
    sys.path.insert(1, str(script.parent / "gguf-py"))
    from conversion import base

    original = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self: Any, tokenizer: Any) -> str:
        try:
            return str(original(self, tokenizer))
        except NotImplementedError:
            if not declared_gpt2_pretokenizer(Path(self.dir_model)):
                raise
            print(
                f"{NOTE} llama.cpp did not recognise this tokenizer by its hash; its tokenizer.json declares "
                "GPT-2's byte-level pre-tokenizer, so the GGUF records llama.cpp's 'gpt-2' pre-tokenizer",
                file=sys.stderr,
                flush=True,
            )
            return "gpt-2"

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre  # type: ignore[method-assign]

    import gguf

    add_to_gguf, init = gguf.SpecialVocab.add_to_gguf, gguf.SpecialVocab.__init__

    def init_keeping_path(self: Any, path: Any, *args: Any, **kwargs: Any) -> None:
        self.tuneboard_dir = Path(path)
        init(self, path, *args, **kwargs)

    def add_with_noop_merge(self: Any, gw: Any, quiet: bool = False) -> None:
        if self.load_merges and not self.merges and declared_gpt2_pretokenizer(self.tuneboard_dir):
            self.merges = [NOOP_MERGE]
            print(
                f"{NOTE} the tokenizer is a byte-level BPE without merges, which GGUF cannot store; one "
                f"merge whose result is not in the vocabulary ({NOOP_MERGE!r}) was written, which never "
                "changes a tokenization",
                file=sys.stderr,
                flush=True,
            )
        add_to_gguf(self, gw, quiet)

    gguf.SpecialVocab.__init__ = init_keeping_path  # type: ignore[method-assign]
    gguf.SpecialVocab.add_to_gguf = add_with_noop_merge  # type: ignore[method-assign]
    sys.argv = [str(script), *argv[1:]]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
