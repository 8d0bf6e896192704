"""`python -m worker.train RUN_DIR`: the training child the app's launchers start.

Reads RUN_DIR/config.json (and RUN_DIR/job.json when reporting to an app), trains, writes
RUN_DIR/outcome.json last, and exits with a contract.protocol.ExitCode.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Parse RUN_DIR from argv and run the job in it."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(
            "usage: python -m worker.train RUN_DIR  (RUN_DIR holds config.json, optionally job.json)",
            file=sys.stderr,
        )
        return 2
    run_dir = Path(args[0])
    # library warnings (transformers' deprecation notices, bitsandbytes' missing kernels) would fill the
    # dashboard's log tail: run_training sends them to RUN_DIR/train.log (worker/train/log.py)
    from worker.train.distributed import is_rank_process, maybe_run_distributed
    from worker.train.remote import UploadError, materialize_run_dir, report, upload_outputs, upload_requested

    if not is_rank_process():
        # a remote node (Ray, remote mode) has no RUN_DIR yet: the launcher sent its files in the env
        materialize_run_dir(run_dir)
    code = maybe_run_distributed(run_dir)  # N > 1 GPUs: torchrun runs this module once per GPU
    if code is None:
        from worker.train.run import run_training

        code = int(run_training(run_dir))
    if not is_rank_process() and upload_requested(run_dir):
        try:
            upload_outputs(run_dir, log=report)
        except UploadError as exc:
            report(f"{exc}; the app cannot serve this run's adapter or checkpoints")
            return code or 1
    return code


if __name__ == "__main__":
    sys.exit(main())
