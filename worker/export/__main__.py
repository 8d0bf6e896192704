"""`python -m worker.export RUN_DIR --config C --format F [--quant Q] [--base B]`: one export of a run.

F: merged | gguf | gguf-lora; Q: see contract.tasks.EXPORT_FORMATS; B: auto | dequantized | full.
C is the job's config as the app stored it (never anything from the worker-written RUN_DIR).
Exit codes: 0 exported, 1 failed, 2 refused (no adapter, or llama.cpp refused the model), 3 parity failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from contract.tasks import DEFAULT_QUANT, EXPORT_BASES, EXPORT_FORMATS, ExportRequestError, export_name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.export")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--config", type=Path, required=True, help="the job's stored config (JSON)")
    parser.add_argument("--format", dest="fmt", choices=list(EXPORT_FORMATS), required=True)
    parser.add_argument("--quant", default=None)
    parser.add_argument("--base", choices=EXPORT_BASES, default="auto")
    args = parser.parse_args(argv)
    quant = args.quant or DEFAULT_QUANT[args.fmt]
    try:
        export_name(args.fmt, quant)
    except ExportRequestError as exc:
        parser.error(str(exc))
    from worker.export.run import run_export

    return run_export(args.run_dir, args.config, args.fmt, quant, args.base)


if __name__ == "__main__":
    sys.exit(main())
