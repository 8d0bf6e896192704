"""One adapter per experiment tracker: open a run, log a step's metrics, close it.

Each reads where to write and its credentials from the tracker's own environment variables on the worker,
as the tracker documents them; without them it writes locally under RUN_DIR/trackers/ (docs/trackers.md):

- wandb: WANDB_MODE (offline unless WANDB_API_KEY is set), WANDB_DIR, WANDB_ENTITY, WANDB_BASE_URL;
- mlflow: MLFLOW_TRACKING_URI (else a SQLite store, trackers/mlflow.db), with its own auth variables;
- tensorboard: event files in trackers/tensorboard (TensorBoard reads files, it has no server to send to);
- trackio: TRACKIO_DIR (else trackers/trackio), TRACKIO_SPACE_ID / TRACKIO_SERVER_URL for a dashboard.

Every call here runs on the forwarder's thread (worker/train/trackers/forwarder.py), never the training
loop's; an exception from any of them makes the forwarder drop that tracker for the run with one warning.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunContext:
    """What every tracker needs to open the run."""

    root: Path  # RUN_DIR/trackers: the local default of every tracker
    project: str
    run_name: str
    config: dict[str, Any]  # the job's canonical config
    resume_ids: dict[str, str] = field(default_factory=dict)  # tracker → its run id from an earlier attempt


class Backend:
    """The interface: open → log* → close. `where` says where the run went, for the run's log."""

    name = ""

    def open(self, ctx: RunContext) -> str:
        """Start (or resume) the run; return where it goes, in words."""
        raise NotImplementedError

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record one step's metrics."""
        raise NotImplementedError

    def log_many(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        """Record the steps' metrics that arrived since the last call (one call a second at most)."""
        for step, metrics in rows:
            self.log(step, metrics)

    def flush(self) -> None:
        """Make what was logged durable (called after each batch of events)."""

    def close(self, failed: bool) -> None:
        """End the run, marked failed or finished."""

    def run_id(self) -> str | None:
        """The id to resume this run under after a relaunch, when the tracker has one."""
        return None


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """The config as dotted keys → short strings (MLflow params, TensorBoard text)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, f"{path}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            out[path] = text[:500]
    return out


class WandbBackend(Backend):
    name = "wandb"

    def open(self, ctx: RunContext) -> str:
        import wandb

        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        directory = Path(os.environ.get("WANDB_DIR") or ctx.root / "wandb")
        directory.mkdir(parents=True, exist_ok=True)
        resume_id = ctx.resume_ids.get(self.name)
        self._run = wandb.init(
            project=ctx.project,
            name=ctx.run_name,
            config=ctx.config,
            dir=str(directory),
            mode=mode,  # type: ignore[arg-type]
            id=resume_id,
            resume="allow" if resume_id else None,
            # console off: W&B must not wrap the worker's stdout/stderr (our log already has them)
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
        )
        if mode == "offline":
            return f"offline run in {_shown(directory, ctx)} (upload later with `wandb sync`)"
        return f"{mode} run {self._run.id} in project {ctx.project}"

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._run.log(metrics, step=step)

    def close(self, failed: bool) -> None:
        self._run.finish(exit_code=1 if failed else 0)

    def run_id(self) -> str | None:
        return str(self._run.id)


class MlflowBackend(Backend):
    name = "mlflow"

    def open(self, ctx: RunContext) -> str:
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        artifacts: str | None = None
        if not uri:
            ctx.root.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{(ctx.root / 'mlflow.db').resolve()}"
            artifacts = (ctx.root / "mlflow-artifacts").resolve().as_uri()
        self._client = client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(ctx.project)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else client.create_experiment(ctx.project, artifact_location=artifacts)
        )
        resume_id = ctx.resume_ids.get(self.name)
        if resume_id:
            self._run_id = resume_id
            client.update_run(resume_id, status="RUNNING")
        else:
            self._run_id = client.create_run(experiment_id, run_name=ctx.run_name).info.run_id
            from mlflow.entities import Param

            params = [Param(k, v) for k, v in flat_params(ctx.config).items()]
            for start in range(0, len(params), 100):  # MLflow takes at most 100 params a call
                client.log_batch(self._run_id, params=params[start : start + 100])
        where = "a SQLite store trackers/mlflow.db" if artifacts else "MLFLOW_TRACKING_URI"
        return f"run {self._run_id} in experiment {ctx.project} ({where})"

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.log_many([(step, metrics)])

    def log_many(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for step, metrics in rows for k, v in metrics.items()]
        for start in range(0, len(batch), 1000):  # one transaction for up to 1000 values (MLflow's limit)
            self._client.log_batch(self._run_id, metrics=batch[start : start + 1000])

    def close(self, failed: bool) -> None:
        self._client.set_terminated(self._run_id, status="FAILED" if failed else "FINISHED")

    def run_id(self) -> str | None:
        return self._run_id


class TensorBoardBackend(Backend):
    name = "tensorboard"

    def open(self, ctx: RunContext) -> str:
        from torch.utils.tensorboard import SummaryWriter

        directory = ctx.root / "tensorboard"
        self._writer = SummaryWriter(log_dir=str(directory), flush_secs=30)
        self._writer.add_text("config", "```\n" + json.dumps(ctx.config, indent=2) + "\n```", 0)
        return f"event files in {_shown(directory, ctx)} (`tensorboard --logdir` on it or on the runs folder)"

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self._writer.add_scalar(key, value, step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self, failed: bool) -> None:
        self._writer.close()


class TrackioBackend(Backend):
    name = "trackio"

    def open(self, ctx: RunContext) -> str:
        # trackio reads TRACKIO_DIR once, when imported: the run's folder unless the worker names one
        if "trackio" not in sys.modules and not os.environ.get("TRACKIO_DIR"):
            os.environ["TRACKIO_DIR"] = str((ctx.root / "trackio").resolve())
        import trackio

        resume = bool(ctx.resume_ids.get(self.name))
        with quiet_stdout():  # its banner; the run's log says where the run went
            self._run = trackio.init(
                project=ctx.project,
                name=ctx.run_name,
                config=ctx.config,
                resume="allow" if resume else "never",
                embed=False,
                auto_log_gpu=False,
                auto_log_cpu=False,
            )
        self._trackio = trackio
        remote = os.environ.get("TRACKIO_SPACE_ID") or os.environ.get("TRACKIO_SERVER_URL")
        where = "a remote dashboard" if remote else "local storage, `trackio show`"
        return f"project {ctx.project} ({where})"

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._trackio.log(metrics, step=step)

    def close(self, failed: bool) -> None:
        with quiet_stdout():
            self._trackio.finish()

    def run_id(self) -> str | None:
        return str(getattr(self._run, "name", "") or "") or None


BACKENDS: dict[str, type[Backend]] = {
    "wandb": WandbBackend,
    "mlflow": MlflowBackend,
    "tensorboard": TensorBoardBackend,
    "trackio": TrackioBackend,
}


def quiet_stdout() -> contextlib.AbstractContextManager[Any]:
    """Swallow what a tracker prints on stdout (a terminal's progress bar shares the worker's output)."""
    return contextlib.redirect_stdout(io.StringIO())


def _shown(directory: Path, ctx: RunContext) -> str:
    """A directory relative to the run's folder when it is inside it (no machine paths in the run's log)."""
    run_root = ctx.root.parent.resolve()
    try:
        return str(directory.resolve().relative_to(run_root))
    except ValueError:
        return str(directory)
