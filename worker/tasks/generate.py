"""`python -m worker.tasks.generate RUN_DIR --config C --prompt-file F --max-new-tokens N`: try the adapter.

C is the job's config as the app stored it (the task input the app writes outside RUN_DIR): the model,
revision, trust_remote_code and quantization come from it only, never from the worker-written RUN_DIR.

One process loads the base once (quantized as it was trained), attaches the adapter, and answers the prompt
twice with greedy decoding: with the adapter, then with it disabled (PEFT's `disable_adapter()`), so the two
answers differ only by what training changed. Output, one JSON object per line, flushed as text arrives:

    {"side": "adapter", "token": "..."}   (one per generated token)  ... then {"side": "base", ...} ...
    {"done": true}
    {"error": "..."}   (instead of done, with exit code 1, when something goes wrong)

The prompt goes through the tokenizer's chat template (as the adapter saw its training chats) unless --raw.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Any

SIDES = ("adapter", "base")


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def prompt_text(tokenizer: Any, prompt: str, *, raw: bool) -> str:
    """The text the model continues: the chat template's user turn + generation prompt, or `prompt` as is."""
    if raw or not getattr(tokenizer, "chat_template", None):
        return prompt
    return str(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    )


def _token_streamer(tokenizer: Any) -> Any:
    """A TextIteratorStreamer that hands out text after every token, not only at word ends."""
    from transformers import TextIteratorStreamer

    class TokenStreamer(TextIteratorStreamer):
        def put(self, value: Any) -> None:
            if value.dim() > 1:
                value = value[0]
            if self.skip_prompt and self.next_tokens_are_prompt:
                self.next_tokens_are_prompt = False
                return
            self.token_cache.extend(value.tolist())
            text = str(self.tokenizer.decode(self.token_cache, **self.decode_kwargs))
            # a byte-level token may end inside a UTF-8 character: wait for the rest of it; and a
            # tokenizer that rewrites earlier text when more follows is caught up with at end()
            if text.endswith("\ufffd") or len(text) <= self.print_len:
                return
            printable = text[self.print_len :]
            self.print_len = len(text)
            self.on_finalized_text(printable)

    return TokenStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600.0)


def _stream_one(model: Any, tokenizer: Any, enc: dict[str, Any], side: str, max_new_tokens: int) -> None:
    streamer = _token_streamer(tokenizer)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                streamer=streamer,
            )
        except BaseException as exc:  # re-raised in the main thread; the streamer must still end
            failure.append(exc)
            streamer.end()

    thread = threading.Thread(target=run, name=f"generate-{side}", daemon=True)
    thread.start()
    for text in streamer:
        if text:
            _emit({"side": side, "token": text})
    thread.join()
    if failure:
        raise failure[0]


def generate(run_dir: Path, config: Path, prompt: str, max_new_tokens: int, *, raw: bool = False) -> None:
    """Stream the adapter's answer, then the base's, as JSON lines on stdout."""
    from worker.tasks.inference import adapter_info, attach_adapter, load_base, load_tokenizer, pick_device

    # a run without an adapter is refused before torch is even imported
    info = adapter_info(run_dir, config)
    import torch

    device = pick_device()
    model = attach_adapter(load_base(info, device=device, quantized=True), info)
    tokenizer = load_tokenizer(info)
    text = prompt_text(tokenizer, prompt, raw=raw)
    # a chat template writes its own BOS; plain text gets the tokenizer's usual special tokens
    bos = tokenizer.bos_token or "\0"
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=not text.startswith(bos))
    enc = {k: v.to(device) for k, v in enc.items()}
    with torch.no_grad():
        _stream_one(model, tokenizer, enc, "adapter", max_new_tokens)
        with model.disable_adapter():
            _stream_one(model, tokenizer, enc, "base", max_new_tokens)


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, generate, and always end with a done or an error line."""
    parser = argparse.ArgumentParser(
        prog="python -m worker.tasks.generate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument(
        "--config", type=Path, required=True, help="the job's stored config (JSON), written by the app"
    )
    parser.add_argument("--prompt-file", type=Path, required=True, help="UTF-8 file holding the prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--raw", action="store_true", help="send the prompt as is, without the chat template")
    args = parser.parse_args(argv)
    if not 1 <= args.max_new_tokens <= 4096:
        _emit({"error": f"--max-new-tokens must be between 1 and 4096 (got {args.max_new_tokens})"})
        return 2
    try:
        prompt = args.prompt_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _emit({"error": f"cannot read the prompt file {args.prompt_file}: {exc}"})
        return 2
    from worker.tasks.inference import TaskError

    try:
        generate(args.run_dir, args.config, prompt, args.max_new_tokens, raw=args.raw)
    except TaskError as exc:
        _emit({"error": str(exc)})
        return 2
    except Exception as exc:  # the app shows this line; the traceback goes to stderr
        import traceback

        traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _emit({"error": f"generation failed: {type(exc).__name__}: {first}"})
        return 1
    _emit({"done": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())
