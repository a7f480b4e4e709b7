"""/v1/jobs: create, list, get, cancel, delete, program, metrics, curve, predict."""

from __future__ import annotations

import io
import logging
import math
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, File, HTTPException, Query, UploadFile, status
from fastapi.responses import Response

from adapters.errors import ConfigurationError, OracleError, QuotaExhausted
from app.api.deps import CurrentTenant, OwnedJob, ServicesDep, SessionDep
from app.api.errors import check_storable, deletion, refused, responses, unprocessable
from app.api.job_models import JobCreated, JobOut, Predictions
from app.api.paging import PageDep
from app.config.settings import Settings
from app.config.spec import JobSpec
from app.data.loading import DataError, DataTooLarge, Limits, decode_resized, image_size
from app.jobs import lifecycle
from app.jobs.artifacts import ProgramFile, curve_png, program_png
from app.jobs.ledger import DbLedger
from app.jobs.oracles import open_oracle
from app.services import credentials, plans
from app.services import jobs as job_service
from app.storage.files import remove
from app.storage.models import Credential, Dataset, Job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
log = logging.getLogger("reprogram.api")
MAX_PREDICT_FILES = 256


@router.post("", status_code=status.HTTP_202_ACCEPTED, responses=responses(413, 503))
def create(spec: JobSpec, s: SessionDep, tenant: CurrentTenant, svc: ServicesDep) -> JobCreated:
    """Queue a reprogramming job. Fields left out are chosen from the oracle, the task and
    the budget; `GET /v1/jobs/{id}` lists the choices once the job starts. Refused with 422
    naming the field: a device the server lacks, a split that leaves no test images, a
    budget below what the job's mapping and evaluation need (the minimum is named)."""
    check_storable(spec.model_dump())
    try:
        job = job_service.create_job(s, svc.settings, tenant_id=tenant.id, spec=spec)
        plans.check_feasible(
            spec,
            s.get_one(Dataset, job.dataset_id),
            svc.settings.data_dir,
            query_cap=job.query_cap,
            price=svc.settings.price(job.provider),
        )
    except job_service.InvalidRequest as err:
        raise refused(str(err)) from err
    if svc.queue is not None:
        # PostgreSQL: the job row must be committed before its queue entry exists, or a
        # quick worker finds no job to claim and drops it.
        s.commit()
        try:
            svc.queue.configure_task("run_job").defer(job_id=job.id)
        except Exception as err:
            # The error's type only: connection errors can carry connection strings.
            log.error("job %s: could not be queued (%s)", job.id, type(err).__name__)
            with svc.db.session() as cleanup:  # the 503 leaves nothing behind
                lifecycle.discard_unqueued(cleanup, job.id)
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                "the job queue is unavailable; the job was not created, try again",
            ) from err
    return JobCreated(id=job.id, status=job.status)


@router.get("", response_model=list[JobOut], responses=responses())
def list_jobs(s: SessionDep, tenant: CurrentTenant, pager: PageDep) -> list[dict[str, Any]]:
    """The tenant's jobs, newest first, one page at a time (`X-Total-Count`: all of them)."""
    rows = pager.rows(s, Job, tenant.id, newest_first=True)
    return [job_service.view(j) for j in rows]


@router.get("/{job_id}", response_model=JobOut, responses=responses(404))
def get_job(job: OwnedJob) -> dict[str, Any]:
    """`{id, status, progress, spend, metrics, error}` (+ choices and result)."""
    return job_service.view(job)


@router.post("/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, responses=responses(404))
def cancel(job: OwnedJob, s: SessionDep) -> JobCreated:
    lifecycle.request_cancel(s, job)
    return JobCreated(id=job.id, status=job.status)


@router.delete("/{job_id}", **deletion("job", "the job is queued or running: cancel it first"))
def delete(job: OwnedJob, s: SessionDep, svc: ServicesDep) -> None:
    """Delete a finished job: its program and other files, checkpoint, metrics, spec and
    results. What it spent stays in `GET /v1/spend` (the ledger is billing history)."""
    try:
        folder = job_service.delete_job(s, job)
    except job_service.Conflict as err:
        raise HTTPException(status.HTTP_409_CONFLICT, str(err)) from err
    s.commit()  # the files go only once nothing refers to them any more
    remove(svc.settings.data_dir, folder)


def _program(job: Any, svc: Any) -> ProgramFile:
    if job.program_path is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"job {job.id} has no program yet (status {job.status})"
        )
    return ProgramFile.load((svc.settings.data_dir / job.program_path).read_bytes())


@router.get(
    "/{job_id}/program",
    responses={
        200: {"content": {"application/octet-stream": {}, "image/png": {}}},
        **responses(404, 409),
    },
)
def program(
    job: OwnedJob, svc: ServicesDep, format: Annotated[str, Query(pattern="^(npz|png)$")] = "npz"
) -> Response:
    """The best program as `program.npz` (format: docs/contract.md), or `?format=png`."""
    prog = _program(job, svc)
    if format == "png":
        return Response(program_png(prog.arrays), media_type="image/png")
    buf = io.BytesIO()
    np.savez_compressed(buf, **prog.arrays)
    return Response(
        buf.getvalue(),
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{job.id}.npz"'},
    )


@router.get("/{job_id}/metrics", responses=responses(404))
def metrics(job: OwnedJob, s: SessionDep) -> list[dict[str, Any]]:
    """One row per iteration / validation: queries, loss, accuracies."""
    return job_service.metric_rows(s, job.id)


@router.get("/{job_id}/curve", responses={200: {"content": {"image/png": {}}}, **responses(404)})
def curve(job: OwnedJob, s: SessionDep) -> Response:
    """The learning curve: accuracy and loss against queries."""
    rows = job_service.metric_rows(s, job.id)
    baselines = (job.result or {}).get("baselines", {})
    return Response(
        curve_png(rows, baselines, f"job {job.id} ({job.status})"), media_type="image/png"
    )


def predict_limits(settings: Settings) -> Limits:
    """What one predict request's images may hold (README "Limits")."""
    return Limits(
        max_pixels=settings.max_image_pixels,
        max_total_pixels=settings.max_predict_pixels,
        total_pixels_setting="REPROGRAM_MAX_PREDICT_PIXELS",
    )


def _decoded(
    files: list[UploadFile], limits: Limits, sizes: tuple[int, ...]
) -> list[list[np.ndarray]]:
    """Every file's header read and the pixels summed before any is decoded; then each
    decoded once and resized at once to each of ``sizes`` (all memory keeps of it): the
    images at each size, in the files' order."""
    contents, total = [], 0
    try:
        for f in files:
            content = f.file.read()  # the request body was limited as it came
            width, height = image_size(content, f.filename or "?", limits)
            total += width * height
            limits.check_total_pixels(total, "files")
            contents.append((f.filename or "?", content))
        copies = [decode_resized(data, name, limits, sizes) for name, data in contents]
        return [list(at_size) for at_size in zip(*copies, strict=True)]
    except DataTooLarge as err:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(err)) from err
    except DataError as err:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(err)) from err


@router.post(
    "/{job_id}/predict", response_model=Predictions, responses=responses(400, 404, 409, 413, 502)
)
def predict(
    job: OwnedJob,
    s: SessionDep,
    svc: ServicesDep,
    files: Annotated[list[UploadFile], File(description="PNG/JPEG images")],
) -> dict[str, Any]:
    """Classify images with the job's best program. Every image is one query to the
    oracle, two when the program's read-out also uses the image's full view (`queries`
    says how many were sent), recorded in the ledger under purpose `predict`. 413: the
    request body is over `REPROGRAM_MAX_PREDICT_BYTES`, or its images' pixels over
    `REPROGRAM_MAX_PREDICT_PIXELS` in all (read from their headers before any is decoded)."""
    prog = _program(job, svc)
    if not files or len(files) > MAX_PREDICT_FILES:
        raise unprocessable("files", f"1 to {MAX_PREDICT_FILES} images")
    target, frame = int(prog.arrays["target_size"]), int(prog.arrays["input_size"])
    # A program with a view also classifies on each image at the frame's size (its full view).
    sized = _decoded(
        files, predict_limits(svc.settings), (target, frame) if prog.views else (target,)
    )
    images, view_images = sized[0], sized[1] if prog.views else None
    spec = JobSpec.model_validate(job.resolved_spec or job.spec)
    cred = s.get(Credential, job.credential_id) if job.credential_id else None
    if job.credential_id and (cred is None or cred.deleted_at is not None):
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"job {job.id}'s credential was deleted; it cannot predict"
        )
    ledger = DbLedger(
        svc.db,
        job.id,
        job.tenant_id,
        spec.oracle.kind,
        job.credential_id,
        svc.settings.price(spec.oracle.kind),
        training=False,
    )
    try:
        with open_oracle(
            spec.oracle,
            input_size=int(prog.arrays["input_size"]),
            settings=svc.settings,
            ledger=ledger,
            secret=credentials.resolver(svc.box, cred),
            egress=svc.settings.egress,
        ) as (_, dispatcher):
            labels = prog.predict(
                images, lambda x: dispatcher.query(x, "predict"), view_images=view_images
            )
    except QuotaExhausted as err:
        # Not this server's fault nor the request's: the same request may pass once the
        # oracle's quota renews, so say when a job would try again.
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"oracle: {err}; try again later",
            headers={
                "Retry-After": str(math.ceil(err.renews_in or svc.settings.quota_wait_seconds))
            },
        ) from err
    except (ConfigurationError, OracleError) as err:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"oracle: {err}") from err
    return {
        "predictions": [
            {"file": f.filename, "class": c} for f, c in zip(files, labels, strict=True)
        ],
        "queries": prog.queries_per_image * len(images),
    }
