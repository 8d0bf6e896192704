"""A stand-in for the task entry points (`worker.tasks.generate` / `worker.tasks.merge`) that loads no model.

It says what the app handed it: its arguments and the task input named by `--config`. As generate, it
prints that as one adapter token then done; as merge (no --prompt-file), it writes it as merge.json's message.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from contract.tasks import write_merge_status


def main(argv: list[str]) -> int:
    """Echo argv and the task input file back to the app."""
    run_dir = Path(argv[0])
    config_path = argv[argv.index("--config") + 1] if "--config" in argv else None
    seen = {
        "argv": argv,
        "config_path": config_path,
        "config": json.loads(Path(config_path).read_text(encoding="utf-8")) if config_path else None,
    }
    if "--prompt-file" in argv:
        print(json.dumps({"side": "adapter", "token": json.dumps(seen)}), flush=True)
        print(json.dumps({"done": True}), flush=True)
    else:
        write_merge_status(run_dir, state="failed", stage="failed", progress=0.0, message=json.dumps(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
