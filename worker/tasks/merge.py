"""`python -m worker.tasks.merge RUN_DIR --config C`: fold the LoRA adapter into a full-precision base.

Loads the base un-quantized in the training dtype, attaches RUN_DIR/adapter, `merge_and_unload()`, and saves
model + tokenizer + a short README to RUN_DIR/merged.partial, renamed to RUN_DIR/merged when complete (so
`merged/` existing means a whole export). Progress goes to RUN_DIR/merge.json for the dashboard.
Quantized runs are refused before anything heavy is imported (see worker.tasks.merge_refusal).
C is the job's config as the app stored it: the base model, revision, trust_remote_code and quantization
come from it only, never from the worker-written RUN_DIR.

Exit codes: 0 merged, 1 failed, 2 refused (quantized base, no adapter).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from contract.tasks import MERGED_DIR, MERGED_PARTIAL_DIR, merge_refusal, write_merge_status

EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2


def _say(run_dir: Path, started: float, state: str, stage: str, progress: float, message: str) -> None:
    write_merge_status(
        run_dir,
        state=state,
        stage=stage,
        progress=progress,
        message=message,
        pid=os.getpid(),
        started_at=started,
    )
    print(json.dumps({"state": state, "stage": stage, "progress": progress, "message": message}), flush=True)


def _readme(base_name: str, dtype: str) -> str:
    return "\n".join(
        [
            f"# {base_name} with a Tuneboard LoRA adapter merged in",
            "",
            f"The run's LoRA adapter was folded into `{base_name}` with PEFT's `merge_and_unload()`; the",
            f"weights are stored in {dtype}. No PEFT is needed: load it like any causal language model.",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "model = AutoModelForCausalLM.from_pretrained('path/to/merged')",
            "tokenizer = AutoTokenizer.from_pretrained('path/to/merged')",
            "```",
            "",
            "The adapter download of the same job carries the model card of the training run (data",
            "fingerprint, metrics, config and the command that reproduces it).",
            "",
        ]
    )


def merge_run(run_dir: Path, config: Path) -> int:
    """Export RUN_DIR/merged; always leaves merge.json saying how it ended; returns the exit code."""
    from worker.tasks.inference import TaskError, adapter_info

    started = time.time()
    run_dir = Path(run_dir)
    try:
        info = adapter_info(run_dir, config)
    except TaskError as exc:
        _say(run_dir, started, "failed", "refused", 0.0, str(exc))
        return EXIT_REFUSED
    refusal = merge_refusal(info.method)
    if refusal is not None:
        _say(run_dir, started, "failed", "refused", 0.0, refusal)
        return EXIT_REFUSED
    partial, final = run_dir / MERGED_PARTIAL_DIR, run_dir / MERGED_DIR
    try:
        _say(run_dir, started, "running", "loading the base model", 0.1, f"loading {info.cfg.model.name}")
        from worker.tasks.inference import attach_adapter, load_base, load_tokenizer, pick_device

        device = pick_device()
        base = load_base(info, device=device, quantized=False)
        _say(run_dir, started, "running", "attaching the adapter", 0.5, "loading the LoRA weights")
        model = attach_adapter(base, info)
        _say(run_dir, started, "running", "merging", 0.6, "folding the LoRA weights into the base")
        merged = model.merge_and_unload()
        _say(run_dir, started, "running", "saving", 0.7, "writing the merged weights")
        shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted export
        merged.save_pretrained(str(partial))
        load_tokenizer(info).save_pretrained(str(partial))
        (partial / "README.md").write_text(_readme(info.cfg.model.name, info.dtype), encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        os.rename(partial, final)  # atomic: merged/ only ever holds a complete export
    except Exception as exc:  # reported in merge.json; the traceback goes to merge.log
        traceback.print_exc()
        shutil.rmtree(partial, ignore_errors=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _say(
            run_dir,
            started,
            "failed",
            "failed",
            0.0,
            f"the export failed: {type(exc).__name__}: {first}; see merge.log in the run directory",
        )
        return EXIT_FAILED
    seconds = time.time() - started
    _say(run_dir, started, "succeeded", "done", 1.0, f"merged model saved in {MERGED_DIR}/ ({seconds:.0f} s)")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Parse RUN_DIR and --config from argv and export its merged model."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[1] != "--config":
        print(
            "usage: python -m worker.tasks.merge RUN_DIR --config JOB_CONFIG_JSON "
            "(RUN_DIR/adapter must exist)",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    return merge_run(Path(args[0]), Path(args[2]))


if __name__ == "__main__":
    sys.exit(main())
