"""`python -m worker.tasks.generate RUN_DIR --config C --prompt-file F [options]`: try the adapter.

C is the job's config as the app stored it (the task input the app writes outside RUN_DIR): the model,
revision, trust_remote_code and quantization come from it only, never from the worker-written RUN_DIR.

One process loads the base once (quantized as it was trained), attaches the adapter, and answers the prompt
twice: with the adapter, then with it disabled (PEFT's `disable_adapter()`), so the two answers differ only
by what training changed. --temperature 0 (the default) decodes greedily; above 0 it samples (with --top-p),
and the random generator is seeded with --seed before each side, so both sides draw the same random numbers
and a repeated call gives the same answers. Output, one JSON object per line, flushed as text arrives:

    {"stage": "loading the base model and the adapter"}   (before torch is imported)
    {"stage": "answering with the adapter"}
    {"side": "adapter", "token": "..."}   (one per generated token)
    {"stage": "answering with the base model"}  ... then {"side": "base", ...} ...
    {"done": true}
    {"error": "..."}   (instead of done, with exit code 1, when something goes wrong)

The prompt goes through the tokenizer's chat template (as the adapter saw its training chats) unless --raw;
--history-file (a JSON list of {"role": "user" | "assistant", "content": str}) holds the conversation so far,
rendered before the prompt as earlier turns (with --raw: as plain lines, one per turn).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Any

SIDES = ("adapter", "base")
ROLES = ("user", "assistant")
STAGE_LOADING = "loading the base model and the adapter"
STAGE_ANSWERING = {"adapter": "answering with the adapter", "base": "answering with the base model"}


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def prompt_text(
    tokenizer: Any, prompt: str, *, raw: bool, history: list[dict[str, str]] | None = None
) -> str:
    """The text the model continues: the chat template's earlier turns, the user turn and the generation
    prompt; or (raw, or no template) the earlier turns' contents and `prompt` as plain lines."""
    turns = [*(history or []), {"role": "user", "content": prompt}]
    if raw or not getattr(tokenizer, "chat_template", None):
        return "\n".join(turn["content"] for turn in turns)
    return str(tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True))


def read_history(path: Path) -> list[dict[str, str]]:
    """The conversation so far from `path` (written by the app); ValueError with the reason if malformed."""
    turns = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(turns, list):
        raise ValueError("the history must be a JSON list of turns")
    for i, turn in enumerate(turns):
        if (
            not isinstance(turn, dict)
            or turn.get("role") not in ROLES
            or not isinstance(turn.get("content"), str)
        ):
            raise ValueError(f"turn {i} of the history is not {{role: user|assistant, content: str}}")
    return [{"role": t["role"], "content": t["content"]} for t in turns]


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


def sampling_kwargs(temperature: float, top_p: float) -> dict[str, Any]:
    """generate()'s decoding arguments: greedy at temperature 0, else sampling with top-p."""
    if temperature <= 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}


def _stream_one(
    model: Any,
    tokenizer: Any,
    enc: dict[str, Any],
    side: str,
    max_new_tokens: int,
    decoding: dict[str, Any],
    seed: int,
) -> None:
    import torch

    streamer = _token_streamer(tokenizer)
    failure: list[BaseException] = []
    _emit({"stage": STAGE_ANSWERING[side]})
    torch.manual_seed(seed)  # each side starts from the same random state: comparable samples

    def run() -> None:
        try:
            model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                streamer=streamer,
                **decoding,
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


def generate(
    run_dir: Path,
    config: Path,
    prompt: str,
    max_new_tokens: int,
    *,
    raw: bool = False,
    history: list[dict[str, str]] | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> None:
    """Stream the adapter's answer, then the base's, as JSON lines on stdout."""
    from worker.tasks.inference import adapter_info, attach_adapter, load_base, load_tokenizer, pick_device

    # a run without an adapter is refused before torch is even imported
    info = adapter_info(run_dir, config)
    _emit({"stage": STAGE_LOADING})
    import torch

    device = pick_device()
    model = attach_adapter(load_base(info, device=device, quantized=True), info)
    tokenizer = load_tokenizer(info)
    text = prompt_text(tokenizer, prompt, raw=raw, history=history)
    # a chat template writes its own BOS; plain text gets the tokenizer's usual special tokens
    bos = tokenizer.bos_token or "\0"
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=not text.startswith(bos))
    enc = {k: v.to(device) for k, v in enc.items()}
    # for try.log (stderr): what was asked, so a surprising answer can be traced to its prompt
    turns = len(history or []) // 2
    how = f"temperature {temperature:g}, top-p {top_p:g}, seed {seed}" if temperature > 0 else "greedy"
    print(
        f"try: {enc['input_ids'].shape[-1]} prompt tokens, {turns} earlier turn(s), {how}",
        file=sys.stderr,
        flush=True,
    )
    decoding = sampling_kwargs(temperature, top_p)
    with torch.no_grad():
        _stream_one(model, tokenizer, enc, "adapter", max_new_tokens, decoding, seed)
        with model.disable_adapter():
            _stream_one(model, tokenizer, enc, "base", max_new_tokens, decoding, seed)


def _bad_argument(args: argparse.Namespace) -> str | None:
    """What is wrong with the decoding arguments, or None."""
    if not 1 <= args.max_new_tokens <= 4096:
        return f"--max-new-tokens must be between 1 and 4096 (got {args.max_new_tokens})"
    if not 0 <= args.temperature <= 2:
        return f"--temperature must be between 0 and 2 (got {args.temperature})"
    if not 0 < args.top_p <= 1:
        return f"--top-p must be above 0 and at most 1 (got {args.top_p})"
    if not 0 <= args.seed < 2**32:
        return f"--seed must be between 0 and {2**32 - 1} (got {args.seed})"
    return None


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
    parser.add_argument(
        "--history-file", type=Path, help="JSON list of earlier turns: {role: user|assistant, content}"
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0 decodes greedily (0 to 2)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass, in (0, 1]")
    parser.add_argument("--seed", type=int, default=0, help="seeds the sampling of each side (>= 0)")
    args = parser.parse_args(argv)
    problem = _bad_argument(args)
    if problem:
        _emit({"error": problem})
        return 2
    try:
        prompt = args.prompt_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _emit({"error": f"cannot read the prompt file {args.prompt_file}: {exc}"})
        return 2
    history: list[dict[str, str]] = []
    if args.history_file is not None:
        try:
            history = read_history(args.history_file)
        except (OSError, ValueError) as exc:
            _emit({"error": f"cannot read the history file {args.history_file}: {exc}"})
            return 2
    from worker.tasks.inference import TaskError

    try:
        generate(
            args.run_dir,
            args.config,
            prompt,
            args.max_new_tokens,
            raw=args.raw,
            history=history,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
        )
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
