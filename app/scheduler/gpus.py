"""What this machine can run: its GPU slots (discovered with NVML or configured) and its CPU slots."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from app.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Slots:
    """The machine's capacity. A job with resources.gpus == N takes N GPU slots; N == 0 takes a CPU slot."""

    gpus: tuple[str, ...]  # CUDA indices as strings, the form CUDA_VISIBLE_DEVICES takes
    cpu_slots: int

    def describe(self) -> str:
        """One line for logs: 'GPUs 0,1 and 1 CPU slot'."""
        gpu_part = f"GPUs {','.join(self.gpus)}" if self.gpus else "no GPUs"
        return f"{gpu_part} and {self.cpu_slots} CPU slot{'s' if self.cpu_slots != 1 else ''}"


def parse_gpu_slots(text: str) -> tuple[str, ...]:
    """Parse "0,1" (or "", or " 0, 2 ") into GPU indices; raise ValueError naming the bad entry."""
    indices: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            raise ValueError(
                f"TUNEBOARD_GPU_SLOTS has {part!r}; "
                "use comma-separated GPU indices such as 0,1 (or empty for none)"
            )
        if part not in indices:
            indices.append(part)
    return tuple(indices)


def discover_nvml_gpus() -> tuple[str, ...]:
    """GPU indices NVML reports; none when the driver or nvidia-ml-py is missing."""
    try:
        import pynvml
    except ImportError:
        return ()
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        # the normal case on a machine without an NVIDIA driver
        log.info("no NVIDIA GPUs found (NVML: %s); jobs will run on CPU slots", exc)
        return ()
    except OSError as exc:
        log.info("NVML library could not be loaded (%s); jobs will run on CPU slots", exc)
        return ()
    try:
        return tuple(str(i) for i in range(pynvml.nvmlDeviceGetCount()))
    except pynvml.NVMLError as exc:
        log.warning("NVML could not count GPUs (%s); jobs will run on CPU slots", exc)
        return ()
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def discover_slots(settings: Settings) -> Slots:
    """The slots this scheduler places jobs on: settings.gpu_slots if set, else NVML discovery."""
    if settings.gpu_slots is not None:
        gpus = parse_gpu_slots(settings.gpu_slots)
    else:
        gpus = discover_nvml_gpus()
    return Slots(gpus=gpus, cpu_slots=settings.cpu_slots)
