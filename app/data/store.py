"""Uploaded data sets: validated completely before anything is stored, then written
atomically under the data directory and referenced from the database with a checksum.
Deleting one removes the file and leaves a tombstone row (finished jobs refer to it)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config.settings import Settings
from app.data.loading import DataError, Limits, load_bytes, read_labels
from app.data.loading import Dataset as Data
from app.storage.files import write_atomic
from app.storage.models import Dataset, new_id, utcnow


def upload_limits(settings: Settings) -> Limits:
    """What one uploaded data set may hold (README "Limits")."""
    return Limits(
        max_pixels=settings.max_image_pixels,
        max_total_pixels=settings.max_upload_pixels,
        total_pixels_setting="REPROGRAM_MAX_UPLOAD_PIXELS",
    )


def store_upload(
    session: Session,
    *,
    data_dir: Path,
    tenant_id: str,
    filename: str,
    content: bytes,
    limits: Limits = Limits(),
) -> Dataset:
    """Check ``content`` (a .zip or .npz) and store it; raises DataError with the reason.
    Every image's header is read and the pixels summed before any is decoded; then each is
    decoded once, one at a time (bad input never lands, and memory holds one image)."""
    suffix = Path(filename).suffix.lower()
    if suffix not in (".zip", ".npz"):
        raise DataError(f"{filename}: upload a .zip (class folders) or a .npz")
    data = load_bytes(content, filename, limits)
    ds_id = new_id("ds")
    rel = Path("datasets") / f"{ds_id}{suffix}"
    write_atomic(data_dir / rel, content)
    row = Dataset(
        id=ds_id,
        tenant_id=tenant_id,
        filename=filename[:255],
        path=str(rel),
        sha256=hashlib.sha256(content).hexdigest(),
        size_bytes=len(content),
        n_samples=len(data.y),
        classes=data.classes,
        image_shape=data.image_shape,
        has_split=data.split is not None,
    )
    session.add(row)
    return row


def load_stored(row: Dataset, data_dir: Path) -> Data:
    """Read a stored data set back, refusing a file whose checksum changed. It was checked
    when it came: its images are decoded when used, one at a time."""
    content = (data_dir / row.path).read_bytes()
    if hashlib.sha256(content).hexdigest() != row.sha256:
        raise DataError(f"dataset {row.id}: stored file does not match its checksum")
    return load_bytes(content, row.filename, verify=False)


def stored_labels(row: Dataset, data_dir: Path) -> Data:
    """A stored data set's labels and split, for planning a job: read from the zip's
    directory or the .npz's small arrays, no image read."""
    return read_labels(data_dir / row.path, row.filename)


def delete(row: Dataset) -> Path:
    """Tombstone the data set (its class names and file name go too); returns the stored
    file (relative to the data directory) for the caller to remove once this is committed.
    The caller checks first that no active job reads it."""
    path = Path(row.path)
    row.classes, row.filename, row.deleted_at = [], "", utcnow()
    return path


def list_for(session: Session, tenant_id: str) -> list[Dataset]:
    q = select(Dataset).where(Dataset.tenant_id == tenant_id, Dataset.deleted_at.is_(None))
    return list(session.scalars(q.order_by(Dataset.created_at)))
