"""Taking a run away through the app: adapter, checkpoint and merged-model zips, metric exports, and trying
the adapter, all on one real tiny run (tiny Llama, quantization none) trained once per session."""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.jobs import service
from app.jobs.status import JobStatus
from app.models import Job, MetricPoint
from contract.config import parse_config
from contract.rundir import CHECKPOINT_COMPLETE_MARKER
from tests.waiting import wait_until
from tests.worker.takeaway_run import TAKEAWAY_STEPS, mergeable_run, preset_cache_dir
from tests.worker.training_runs import FinishedRun
from worker.train.finish import REFERENCE_LOGITS

pytestmark = pytest.mark.training
TOKEN = "takeaway-token"


@pytest.fixture(scope="module")
def run() -> FinishedRun:
    return mergeable_run()


@pytest.fixture(autouse=True)
def task_env(run: FinishedRun, monkeypatch: pytest.MonkeyPatch) -> None:
    """Task children find the preset the training child built, and use one thread like it."""
    monkeypatch.setenv("TUNEBOARD_CACHE_DIR", str(preset_cache_dir(run)))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def job_from_run(
    client: TestClient,
    factory: sessionmaker[Session],
    run: FinishedRun,
    tmp_path: Path,
    *,
    quantization: str = "none",
    finish: bool = True,
) -> tuple[int, Path]:
    """A job whose run directory is a copy of `run`, fed the run's real events through ingest."""
    run_dir = tmp_path / "run"
    shutil.copytree(run.run_dir.root, run_dir)
    config = json.loads(run.run_dir.config.read_text(encoding="utf-8"))
    config["quantization"]["method"] = quantization
    with factory() as session:
        job = service.create_job(session, config=parse_config(config), config_text=json.dumps(config))
        service.transition(session, job=job, to=JobStatus.STARTING)
        job.token_hash = hashlib.sha256(TOKEN.encode()).hexdigest()
        job.run_dir = str(run_dir)
        job.attempt = 1
        session.commit()
        job_id = job.id
    answer = client.post(
        f"/api/jobs/{job_id}/events",
        json={"events": run.events},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert answer.status_code == 200, answer.text
    if finish:
        set_status(factory, job_id, JobStatus.SUCCEEDED)
    return job_id, run_dir


def set_status(factory: sessionmaker[Session], job_id: int, to: JobStatus, reason: str | None = None) -> None:
    """Move a job as the supervisor would (through the real transition function)."""
    with factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        service.transition(session, job=job, to=to, reason=reason)
        session.commit()


def unzip(content: bytes, dest: Path) -> Path:
    with zipfile.ZipFile(io.BytesIO(content)) as zf:
        zf.extractall(dest)
    return dest


def base_model(run: FinishedRun) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    quant = json.loads((run.run_dir.adapter / "tuneboard_quantization.json").read_text(encoding="utf-8"))
    return AutoModelForCausalLM.from_pretrained(quant["base_model"], dtype=torch.float32).eval()


def logits_for(model: Any, run: FinishedRun) -> tuple[Any, Any]:
    import torch
    from safetensors.torch import load_file

    ref = load_file(str(run.run_dir.adapter / REFERENCE_LOGITS))
    with torch.no_grad():
        out = model(input_ids=ref["input_ids"], attention_mask=torch.ones_like(ref["input_ids"])).logits
    return out.float(), ref["logits"]


# ------------------------------------------------------------------------------------------- adapter


def test_the_adapter_zip_loads_with_plain_peft_and_reproduces_the_workers_logits(
    client: TestClient, session_factory: sessionmaker[Session], run: FinishedRun, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel

    job_id, _ = job_from_run(client, session_factory, run, tmp_path)
    answer = client.get(f"/api/jobs/{job_id}/adapter")
    assert answer.status_code == 200
    adapter = unzip(answer.content, tmp_path / "adapter")
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "README.md",
        "tuneboard_config.json",
        "tuneboard_quantization.json",
        REFERENCE_LOGITS,
    ):
        assert (adapter / name).is_file(), name
    card = (adapter / "README.md").read_text(encoding="utf-8")
    for expected in (
        "preset:tiny-llama",
        "fingerprint",
        "## Final metrics",
        "## Preflight notes",
        "tuneboard train",
    ):
        assert expected in card, expected
    model = PeftModel.from_pretrained(base_model(run), str(adapter)).eval()
    logits, reference = logits_for(model, run)
    # the same fp32 weights and the same adapter, unquantized: equal up to float rounding
    assert torch.allclose(logits, reference, atol=1e-5, rtol=1e-5), (logits - reference).abs().max()
    plain, _ = logits_for(base_model(run), run)
    assert (plain - reference).abs().max() > 1e-3  # the check above could fail: the adapter matters


# ------------------------------------------------------------------------------------------- checkpoints


def test_complete_checkpoints_are_listed_and_download_as_zips(
    client: TestClient, session_factory: sessionmaker[Session], run: FinishedRun, tmp_path: Path
) -> None:
    job_id, run_dir = job_from_run(client, session_factory, run, tmp_path)
    listed = client.get(f"/api/jobs/{job_id}/checkpoints").json()
    assert [c["name"] for c in listed] == ["checkpoint-2", "checkpoint-4"]
    assert [c["step"] for c in listed] == [2, TAKEAWAY_STEPS]
    answer = client.get(listed[0]["download_url"])
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(answer.content)) as zf:
        names = set(zf.namelist())
        source = run_dir / "checkpoints" / "checkpoint-2"
        assert names == {str(p.relative_to(source)) for p in source.rglob("*") if p.is_file()}
        assert zf.read("adapter_model.safetensors") == (source / "adapter_model.safetensors").read_bytes()
    assert CHECKPOINT_COMPLETE_MARKER in names and "optimizer.pt" in names


def test_an_incomplete_checkpoint_is_not_listed_and_its_download_is_refused_with_the_reason(
    client: TestClient, session_factory: sessionmaker[Session], run: FinishedRun, tmp_path: Path
) -> None:
    job_id, run_dir = job_from_run(client, session_factory, run, tmp_path)
    torn = run_dir / "checkpoints" / "checkpoint-6"
    shutil.copytree(run_dir / "checkpoints" / "checkpoint-4", torn)
    (torn / CHECKPOINT_COMPLETE_MARKER).unlink()  # as a save killed halfway leaves it
    assert "checkpoint-6" not in [c["name"] for c in client.get(f"/api/jobs/{job_id}/checkpoints").json()]
    answer = client.get(f"/api/jobs/{job_id}/checkpoints/checkpoint-6.zip")
    assert answer.status_code == 409
    assert "incomplete" in answer.json()["detail"] and "interrupted" in answer.json()["detail"]
    page = client.get(f"/jobs/{job_id}").text
    assert "checkpoint-6" in page and f"/api/jobs/{job_id}/checkpoints/checkpoint-6.zip" not in page


def test_checkpoint_names_that_are_not_checkpoints_are_refused(
    client: TestClient, session_factory: sessionmaker[Session], run: FinishedRun, tmp_path: Path
) -> None:
    job_id, _ = job_from_run(client, session_factory, run, tmp_path)
    for name in ("..", "adapter", "checkpoint-99", "checkpoint-2%2F..%2F..%2Fadapter"):
        answer = client.get(f"/api/jobs/{job_id}/checkpoints/{name}.zip")
        assert answer.status_code == 404, name


# ------------------------------------------------------------------------------------------- metrics


def test_metrics_csv_and_json_hold_every_stored_point_with_non_finite_values_spelled_out(
    client: TestClient, session_factory: sessionmaker[Session], run: FinishedRun, tmp_path: Path
) -> None:
    job_id, _ = job_from_run(client, session_factory, run, tmp_path, finish=False)
    extra = [
        {
            "seq": 10_000,
            "kind": "metric",
            "step": 50,
            "ts": 1.0,
            "payload": {"loss": "nan", "grad_norm": "inf"},
        },
        {
            "seq": 10_001,
            "kind": "metric",
            "step": 51,
            "ts": 2.0,
            "payload": {"loss": 1.5, "grad_norm": "-inf"},
        },
    ]
    answer = client.post(
        f"/api/jobs/{job_id}/events", json={"events": extra}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert answer.status_code == 200, answer.text
    with session_factory() as session:
        stored = {
            (r.key, r.step): (r.nonfinite if r.value is None else r.value)
            for r in session.execute(select(MetricPoint.__table__).where(MetricPoint.job_id == job_id))
        }
    sent: dict[tuple[str, int], Any] = {}
    for event in [*run.events, *extra]:
        if event["kind"] == "metric":
            for key, value in event["payload"].items():
                sent[(key, event["step"])] = value if isinstance(value, str) else float(value)
    assert stored == sent and len(stored) > 30  # loss, grad_norm, lr, throughput, memory, eval per step

    as_json = client.get(f"/api/jobs/{job_id}/metrics.json")
    assert as_json.status_code == 200
    series = json.loads(as_json.text)["series"]  # strict JSON: non-finite values are strings
    from_json = {(key, step): value for key, points in series.items() for step, value in points}
    assert from_json == stored
    assert from_json[("loss", 50)] == "nan" and from_json[("grad_norm", 51)] == "-inf"

    as_csv = client.get(f"/api/jobs/{job_id}/metrics.csv")
    assert as_csv.status_code == 200 and as_csv.headers["content-type"].startswith("text/csv")
    lines = as_csv.text.strip().split("\n")
    header = lines[0].split(",")
    assert header[0] == "step" and sorted(header[1:]) == sorted({k for k, _ in stored})
    from_csv: dict[tuple[str, int], Any] = {}
    for line in lines[1:]:
        cells = line.split(",")
        for key, cell in zip(header[1:], cells[1:], strict=True):
            if cell != "":
                from_csv[(key, int(cells[0]))] = cell if cell in ("nan", "inf", "-inf") else float(cell)
    assert from_csv == stored
    assert math.isnan(float(from_csv[("loss", 50)]))


# ------------------------------------------------------------------------------------------- merged export


def wait_for_merge(client: TestClient, job_id: int, timeout: float = 120) -> dict[str, Any]:
    """Poll the export's status until it succeeded or failed; return it."""
    status: dict[str, Any] = wait_until(
        lambda: client.get(f"/api/jobs/{job_id}/export-merged").json(),
        timeout,
        "the merged export to finish",
        interval=0.2,
        until=lambda status: status["state"] in ("succeeded", "failed"),
    )
    return status


def test_the_merged_export_runs_as_a_worker_task_and_loads_with_plain_transformers(
    client: TestClient, session_factory: sessionmaker[Session], run: FinishedRun, tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    job_id, run_dir = job_from_run(client, session_factory, run, tmp_path)
    assert client.get(f"/api/jobs/{job_id}/merged.zip").status_code == 404
    started = client.post(f"/api/jobs/{job_id}/export-merged")
    assert started.status_code == 202, started.text
    assert started.json()["state"] in ("starting", "running")
    again = client.post(f"/api/jobs/{job_id}/export-merged")
    assert again.status_code == 409 and "already" in again.json()["detail"]
    box = client.get(f"/jobs/{job_id}/partials/merge").text  # what the page polls meanwhile
    assert "Exporting" in box and 'hx-trigger="every 2s"' in box
    status = wait_for_merge(client, job_id)
    assert status["state"] == "succeeded", status
    assert status["download_url"] == f"/api/jobs/{job_id}/merged.zip"
    box = client.get(f"/jobs/{job_id}/partials/merge").text
    assert f'href="/api/jobs/{job_id}/merged.zip"' in box and "hx-trigger" not in box  # polling stops

    answer = client.get(status["download_url"])
    assert answer.status_code == 200
    merged = unzip(answer.content, tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32).eval()
    assert not any("lora" in name for name, _ in model.named_parameters())
    logits, reference = logits_for(model, run)
    # W + s·B·A folded in fp32 versus x·W + s·(x·A)·B computed separately: the same sums in another
    # order, so float32 rounding only (measured: 3e-6 here, 8e-6 on tiny Gemma 3n, logits up to ~14).
    # 1e-4 leaves room for other BLAS kernels; a wrong merge (scale, missing layer) is off by far more:
    # the base alone differs from the reference by more than 1e-3 (the adapter-zip test checks that).
    assert torch.allclose(logits, reference, atol=1e-4, rtol=1e-4), (logits - reference).abs().max()
    assert client.post(f"/api/jobs/{job_id}/export-merged").status_code == 200  # done: not merged twice


def test_a_quantized_run_gets_no_merged_export_and_is_told_why(
    client: TestClient, session_factory: sessionmaker[Session], run: FinishedRun, tmp_path: Path
) -> None:
    job_id, run_dir = job_from_run(client, session_factory, run, tmp_path, quantization="nf4")
    answer = client.post(f"/api/jobs/{job_id}/export-merged")
    assert answer.status_code == 409
    detail = answer.json()["detail"]
    assert "4-bit" in detail and "loses precision" in detail and "quantization.method none" in detail
    assert not (run_dir / "merge.json").exists()  # nothing was started
    page = client.get(f"/jobs/{job_id}").text
    assert "loses precision" in page and "Export merged model" not in page
    from_page = client.post(f"/jobs/{job_id}/export-merged", headers={"HX-Request": "true"})
    assert from_page.status_code == 200 and "loses precision" in from_page.text  # htmx swaps 2xx only
    assert client.post(f"/jobs/{job_id}/export-merged", follow_redirects=False).status_code == 409
    assert not (run_dir / "merge.json").exists()


# ------------------------------------------------------------------------------------------- try the adapter


def sse_events(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.split("\n\n"):
        name, data = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: ") :])
        if name:
            events.append((name, data))
    return events


def test_trying_the_adapter_streams_tokens_for_both_sides_then_done(
    client: TestClient, session_factory: sessionmaker[Session], run: FinishedRun, tmp_path: Path
) -> None:
    job_id, _ = job_from_run(client, session_factory, run, tmp_path)
    params: dict[str, str | int] = {"prompt": "Reverse the letters: tune", "max_new_tokens": 8}
    with client.stream("GET", f"/api/jobs/{job_id}/try", params=params) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        events = sse_events("".join(answer.iter_text()))
    assert events[-1] == ("done", {})
    tokens = [data for name, data in events if name == "token"]
    sides = [t["side"] for t in tokens]
    assert "adapter" in sides and "base" in sides
    assert sides == sorted(sides), "the adapter answers first, then the base"  # "adapter" < "base"
    assert all(isinstance(t["token"], str) and t["token"] for t in tokens)
    # the job is free again: the next try is accepted, an over-long one is refused
    too_long = client.get(f"/api/jobs/{job_id}/try", params={"prompt": "x", "max_new_tokens": 100_000})
    assert too_long.status_code == 422 and "max_new_tokens" in too_long.json()["detail"]


def test_a_job_that_did_not_succeed_cannot_be_tried(
    client: TestClient, session_factory: sessionmaker[Session], run: FinishedRun, tmp_path: Path
) -> None:
    job_id, _ = job_from_run(client, session_factory, run, tmp_path, finish=False)
    answer = client.get(f"/api/jobs/{job_id}/try", params={"prompt": "hello"})
    assert answer.status_code == 409 and "succeeded" in answer.json()["detail"]


def test_the_detail_page_shows_the_prompt_box_only_for_succeeded_jobs(
    client: TestClient, session_factory: sessionmaker[Session], run: FinishedRun, tmp_path: Path
) -> None:
    job_id, _ = job_from_run(client, session_factory, run, tmp_path / "a", finish=False)
    running = client.get(f"/jobs/{job_id}").text
    assert 'id="try-form"' not in running and 'id="try-unavailable"' in running
    set_status(session_factory, job_id, JobStatus.SUCCEEDED)
    done = client.get(f"/jobs/{job_id}").text
    assert 'id="try-form"' in done and 'id="try-unavailable"' not in done
    assert f'action="/api/jobs/{job_id}/try"' in done
    fragment = client.get(f"/jobs/{job_id}/partials/takeaway").text
    assert 'id="try-form"' in fragment and fragment.lstrip().startswith('<div class="two-col takeaway"')

    failed_id, _ = job_from_run(client, session_factory, run, tmp_path / "b", finish=False)
    set_status(session_factory, failed_id, JobStatus.FAILED, "diverged")
    assert 'id="try-form"' not in client.get(f"/jobs/{failed_id}").text
