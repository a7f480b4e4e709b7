"""POST/GET/DELETE /v1/datasets."""

from __future__ import annotations

from pathlib import PurePosixPath

from fastapi import APIRouter, HTTPException, UploadFile, status
from pydantic import BaseModel

from app.api.deps import CurrentTenant, ServicesDep, SessionDep, find_owned
from app.api.errors import deletion, responses, unprocessable
from app.api.paging import PageDep
from app.data import store as datasets
from app.data.loading import DataError, DataTooLarge, TooLittleData
from app.services.jobs import active_job_using_dataset
from app.storage.files import remove
from app.storage.models import Dataset

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


class DatasetOut(BaseModel):
    id: str
    n_samples: int
    classes: list[str]
    image_shape: list[int] | None
    filename: str
    has_split: bool
    sha256: str


def _out(row: Dataset) -> DatasetOut:
    return DatasetOut.model_validate(row, from_attributes=True)


@router.post("", status_code=status.HTTP_201_CREATED, responses=responses(400, 413))
def upload(file: UploadFile, s: SessionDep, tenant: CurrentTenant, svc: ServicesDep) -> DatasetOut:
    """Upload a `.zip` (`<class>/<image>`, optionally under `train/ val/ test/`) or a `.npz`
    (`x` uint8 N×H×W×C, `y`, optional `classes`, `split`). Every image's size is read from
    its header and the pixels summed before any is decoded; every image is decoded before
    anything is stored. 400: not a readable data set; 413: over a size limit (the request
    body, one image's pixels, the pixels in all); 422: readable, but too little to train on
    (fewer than 2 classes, a class of fewer than 3 images without a split of its own)."""
    limit = svc.settings.max_upload_bytes  # the body was limited as it came (app.api.limits)
    content = file.file.read(limit + 1)
    if len(content) > limit:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"upload larger than {limit} bytes")
    try:
        row = datasets.store_upload(
            s,
            data_dir=svc.settings.data_dir,
            tenant_id=tenant.id,
            filename=_clean_filename(file.filename),
            content=content,
            limits=datasets.upload_limits(svc.settings),
        )
    except DataTooLarge as err:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(err)) from err
    except TooLittleData as err:
        raise unprocessable("file", str(err)) from err
    except DataError as err:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(err)) from err
    try:
        s.flush()  # the row's problems surface here, while the file can still be taken back
    except BaseException:
        (svc.settings.data_dir / row.path).unlink(missing_ok=True)
        raise
    return _out(row)


def _clean_filename(name: str | None) -> str:
    """The client's file name, kept for display only: no folders, no control characters."""
    base = PurePosixPath((name or "").replace("\\", "/")).name
    return "".join(ch for ch in base if ch.isprintable())[:255] or "upload"


@router.get("", responses=responses())
def list_datasets(s: SessionDep, tenant: CurrentTenant, pager: PageDep) -> list[DatasetOut]:
    """The tenant's data sets, oldest first, one page at a time (`X-Total-Count`: all)."""
    return [_out(r) for r in pager.rows(s, Dataset, tenant.id)]


@router.get("/{dataset_id}", responses=responses(404))
def get_dataset(dataset_id: str, s: SessionDep, tenant: CurrentTenant) -> DatasetOut:
    return _out(find_owned(s, Dataset, dataset_id, tenant.id))


@router.delete(
    "/{dataset_id}",
    **deletion("data set", "a queued or running job reads it (the message names the job)"),
)
def delete(dataset_id: str, s: SessionDep, tenant: CurrentTenant, svc: ServicesDep) -> None:
    """Delete a data set and its stored file. Finished jobs that used it keep their
    programs and results; a queued or running job that reads it must end first."""
    row = find_owned(s, Dataset, dataset_id, tenant.id)
    user = active_job_using_dataset(s, row.id)
    if user is not None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"data set in use by job {user.id} ({user.status}); cancel the job first",
        )
    path = datasets.delete(row)
    s.commit()  # the file goes only once nothing refers to it any more
    remove(svc.settings.data_dir, path)
