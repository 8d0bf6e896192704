"""One export of a finished run: merge, convert, check parity, write the card, and only then publish.

Writes RUN_DIR/exports/NAME.partial/, then renames it to RUN_DIR/exports/NAME/ only when every artifact
passed its parity check (worker.export.parity); an export outside its tolerance is renamed to
NAME.rejected/ (kept for inspection, never offered for download) and its status says failed with the
numbers. Progress and the outcome go to RUN_DIR/exports/NAME.json (contract.tasks.write_export_status).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.tasks import EXPORTS_DIR, export_name, write_export_status

EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_PARITY = 0, 1, 2, 3


@dataclass
class Reporter:
    """Writes NAME.json and a JSON line on stdout for every step."""

    run_dir: Path
    name: str
    started: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)

    def say(self, state: str, stage: str, progress: float, message: str, **more: Any) -> None:
        self.extra.update(more)
        write_export_status(
            self.run_dir,
            self.name,
            state=state,
            stage=stage,
            progress=progress,
            message=message,
            pid=os.getpid(),
            started_at=self.started,
            **self.extra,
        )
        line = {"state": state, "stage": stage, "progress": progress, "message": message}
        print(json.dumps(line), flush=True)


def _save_hf(model: Any, tokenizer: Any, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def _loaded_logits(folder: Path, device: str) -> Any:
    """A scorer that runs the saved folder as transformers loads it (proves the export loads)."""
    from transformers import AutoModelForCausalLM

    from worker.export.parity import hf_logits

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype="auto", device_map={"": device})
    model.eval()
    return lambda seqs, starts: hf_logits(model, seqs, starts)


def run_export(run_dir: Path, config: Path, fmt: str, quant: str, base_request: str = "auto") -> int:
    """Make one export of RUN_DIR; always leaves NAME.json saying how it ended; returns the exit code."""
    from worker.tasks.inference import TaskError, adapter_info

    run_dir = Path(run_dir)
    name = export_name(fmt, quant)
    report = Reporter(run_dir, name, extra={"format": fmt, "quant": quant})
    try:
        info = adapter_info(run_dir, config)
    except TaskError as exc:
        report.say("failed", "refused", 0.0, str(exc))
        return EXIT_REFUSED
    exports = run_dir / EXPORTS_DIR
    partial, final, rejected = (exports / f"{name}{s}" for s in (".partial", "", ".rejected"))
    exports.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".work-{name}-", dir=exports))
    try:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        passed, message = _produce(info, report, fmt, quant, base_request, partial, work)
        from worker.export.card import list_files

        files = list_files(partial)
        target = final if passed else rejected
        shutil.rmtree(target, ignore_errors=True)
        os.rename(partial, target)  # atomic: NAME/ only ever holds a complete export that passed
        if passed:
            report.say("succeeded", "done", 1.0, message, files=files)
            return EXIT_OK
        report.say("failed", "parity", 1.0, message, files=[])
        return EXIT_PARITY
    except Exception as exc:  # reported in NAME.json; the traceback goes to the task's log
        traceback.print_exc()
        shutil.rmtree(partial, ignore_errors=True)
        from worker.export.gguf import ConversionRefused
        from worker.export.llamacpp import ToolchainError

        if isinstance(exc, ConversionRefused | ToolchainError):
            report.say("failed", "refused", 0.0, str(exc))
            return EXIT_REFUSED
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        report.say("failed", "failed", 0.0, f"the export failed: {type(exc).__name__}: {first}")
        return EXIT_FAILED
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _produce(
    info: Any, report: Reporter, fmt: str, quant: str, base_request: str, out: Path, work: Path
) -> tuple[bool, str]:
    """Write the export's files into `out`; (parity passed, the message for the page)."""
    from worker.export import parity
    from worker.export.card import render_card
    from worker.export.merge import merge_adapter, resolve_base
    from worker.tasks.inference import load_tokenizer, pick_device

    device = pick_device()
    base = resolve_base(info.method, base_request)
    report.say("running", "loading and merging", 0.1, f"folding the adapter into {base} base", base=base)
    merged = merge_adapter(info, base=base, device=device, keep_base=fmt == "gguf-lora")
    tokenizer = load_tokenizer(info)
    report.say("running", "parity reference", 0.3, "the adapter on its base answers the held-out prompts")
    reference = parity.reference_from(merged.reference, tokenizer)
    merged.reference = None  # free it: the numbers are kept
    report.extra["base_words"] = merged.words
    card: dict[str, Any] = {
        "name": out.name.removesuffix(".partial"),
        "fmt": fmt,
        "quant": quant,
        "base_model": info.cfg.model.name,
        "base": base,
        "base_words": merged.words,
    }
    log = work / "convert.log"
    if fmt == "merged":
        report.say("running", "saving", 0.5, "writing the merged weights")
        _save_hf(merged.model, tokenizer, out)
        report.say("running", "parity", 0.8, "loading the saved model in transformers and comparing")
        result = parity.check(reference, "merged", _loaded_logits(out, device))
    else:
        from worker.export import gguf
        from worker.export.modelfile import write_modelfile

        hf_dir = work / "hf"
        report.say("running", "saving", 0.4, "writing the merged weights for the converter")
        if fmt == "gguf":
            _save_hf(merged.model, tokenizer, hf_dir)
            outtype = "bf16" if quant == "bf16" else "f16"
            report.say("running", "converting", 0.5, f"convert_hf_to_gguf.py --outtype {outtype}")
            f16 = gguf.convert_model(hf_dir, work / f"model-{outtype}.gguf", outtype=outtype, log=log)
            target = out / f"model-{quant}.gguf"
            if quant in ("f16", "bf16"):
                shutil.move(str(f16), target)
            else:
                report.say("running", "quantizing", 0.65, f"llama.cpp quantizes to {quant}")
                gguf.quantize(f16, target, quant)
            report.say("running", "parity", 0.8, "running the GGUF in llama.cpp and comparing")
            result = parity.check(reference, f"gguf-{quant}", lambda s, st: gguf.gguf_logits(target, s, st))
            texts = parity.prompt_texts(tokenizer)
            result = parity.with_tokenizer(result, gguf.tokenizer_matches(target, tokenizer, texts))
            write_modelfile(out, target.name, tokenizer)
            card.update(gguf=target.name)
        else:  # gguf-lora: the adapter alone, plus the f16 GGUF of the base it applies to
            _save_hf(merged.base_model, tokenizer, hf_dir)
            report.say("running", "converting", 0.5, "converting the base and the LoRA to GGUF")
            base_gguf = gguf.convert_model(hf_dir, out / "base-f16.gguf", outtype="f16", log=log)
            lora = gguf.convert_lora(info.adapter, hf_dir, out / "adapter-f16.gguf", log=log)
            report.say("running", "parity", 0.8, "llama.cpp applies the LoRA GGUF on the base GGUF")
            result = parity.check(
                reference,
                "gguf-lora-f16",
                lambda s, st: gguf.gguf_logits(base_gguf, s, st, lora_path=lora),
            )
            texts = parity.prompt_texts(tokenizer)
            result = parity.with_tokenizer(result, gguf.tokenizer_matches(base_gguf, tokenizer, texts))
            write_modelfile(out, base_gguf.name, tokenizer, adapter_name=lora.name)
            card.update(gguf=lora.name, base_gguf=base_gguf.name)
    if fmt != "merged":
        from worker.export.gguf import NOTES

        card["notes"] = list(NOTES)
    (out / "README.md").write_text(render_card(parity=result, **card), encoding="utf-8")
    report.extra["parity"] = result
    return bool(result["passed"]), parity.describe(result)
