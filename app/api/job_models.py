"""The typed answers of /v1/jobs: what ``app.services.jobs.view`` returns, field for field
(docs/contract.md fixes the job object), and what predict answers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["queued", "running", "succeeded", "failed", "cancelled", "budget_exhausted"]


class Progress(BaseModel):
    iteration: int = Field(description="training iterations done")
    iterations: int | None = Field(description="iterations planned (null until the job starts)")


class Spend(BaseModel):
    queries: int = Field(description="images the oracle answered for this job")
    requests: int
    cost_usd: float
    max_queries: int | None
    max_cost_usd: float | None


class Waiting(BaseModel):
    until: str = Field(description="when the job may run again (ISO 8601)")
    reason: str | None = Field(description="why it waits, e.g. the oracle's hourly quota")


class JobOut(BaseModel):
    """The contract's job object, plus what was chosen and the result."""

    # Fields a newer server adds are passed on, not dropped.
    model_config = ConfigDict(extra="allow")

    id: str
    status: Status
    progress: Progress
    spend: Spend
    metrics: dict[str, Any] = Field(description="the latest metrics row ({} before the first)")
    error: str | None
    waiting: Waiting | None = Field(
        default=None,
        description="set while a queued job waits for its oracle's quota to renew",
    )
    dataset_id: str | None
    oracle: str = Field(description="the oracle's kind: torch, clarifai or customvision")
    choices: list[str] = Field(description="each open field of the spec, as chosen, and why")
    result: dict[str, Any] | None = Field(description="result.json's contents once finished")
    created_at: str | None
    finished_at: str | None


class JobCreated(BaseModel):
    id: str
    status: Status


class Prediction(BaseModel):
    file: str | None
    class_: str = Field(alias="class")

    model_config = ConfigDict(populate_by_name=True)


class Predictions(BaseModel):
    predictions: list[Prediction]
    queries: int = Field(
        description="frames sent to the oracle: one per file, two when the program's read-out "
        "also uses each image's full view"
    )
