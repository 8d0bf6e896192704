"""Plain-words advice for a failed run, in one wording whichever side notices the failure.

The training process writes it into outcome.json when it catches the error itself; the app's supervisor
writes the same words when it only sees the exit (a kill, a torn outcome.json).
"""

from __future__ import annotations

from contract.config import JobConfig


def oom_advice(config: JobConfig | None, *, on_gpu: bool) -> str:
    """What ran out and which settings to change, naming their current values when the config is known."""
    what = "out of GPU memory" if on_gpu else "out of memory (host RAM)"
    if config is None:  # the stored config could not be read: the same tips, without current values
        return (
            f"{what}: lower training.batch_size and raise training.grad_accum to keep the batch; "
            "or lower training.max_seq_len; or turn on training.gradient_checkpointing"
        )
    t = config.training
    tips = [f"lower training.batch_size (now {t.batch_size}) and raise training.grad_accum to keep the batch"]
    tips.append(f"lower training.max_seq_len (now {t.max_seq_len})")
    if not t.gradient_checkpointing:
        tips.append("turn on training.gradient_checkpointing")
    if config.quantization.method == "none":
        tips.append("use quantization.method nf4")
    return f"{what}: " + "; or ".join(tips)
