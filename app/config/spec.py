"""The job spec: the same JSON for ``POST /v1/jobs`` and ``reprogram train --config``.

Every field but ``oracle`` has a default; fields left ``null`` are chosen by
``app.config.defaults.resolve`` from the oracle's label count, the number of classes and the budget,
and the resolved spec is what a job stores and reports. Unknown fields and out-of-range
values are refused, naming the field. Types are strict: a number must be a JSON number (an
integer field takes no ``1.5``, ``"300"`` or ``true``), a flag a JSON boolean. Strings and
lists have caps (``MAX_ID``, ``MAX_NAME``, ``MAX_LABELS``, ...); the API caps the whole
body besides (``REPROGRAM_MAX_JSON_BYTES``).
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_ID = 64  # ids the service issues (ds_…, cr_…) are far shorter
MAX_NAME = 200  # model ids, project names, labels
MAX_PATH = 4096  # a TorchScript file path, an endpoint URL
MAX_LABELS = 10_000  # names of an oracle's outputs (ImageNet has 1,000)

Label = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
Labels = Annotated[list[Label], Field(min_length=1, max_length=MAX_LABELS)]


class Strict(BaseModel):
    # No NaN/Infinity: they cannot be stored (PostgreSQL JSON) and mean nothing here.
    # strict: no coercion (true is not 1, "300" is not 300, 1.0 is not an integer).
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, allow_inf_nan=False, strict=True
    )


def _check_endpoint(value: str | None) -> str | None:
    if value is None:
        return value
    url = urlsplit(value)
    if url.scheme not in ("https", "http") or not url.hostname:
        raise ValueError("endpoint must be an https:// URL, or http://host:port for plaintext")
    return value.rstrip("/")


class CloudCredential(Strict):
    """Where the key comes from: a stored credential (REST) or an environment variable (CLI)."""

    credential_id: str | None = Field(default=None, max_length=MAX_ID)
    api_key_env: str | None = Field(
        default=None, max_length=MAX_NAME, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"
    )
    endpoint: str | None = Field(default=None, max_length=MAX_PATH)
    rate_limit: float | None = Field(default=None, gt=0, le=10_000)
    labels: Labels | None = None

    _endpoint = field_validator("endpoint")(_check_endpoint)


class TorchOracleSpec(Strict):
    kind: Literal["torch"]
    model: str = Field(
        default="efficientnet-lite0",
        min_length=1,
        max_length=MAX_PATH,
        description="'efficientnet-lite0' (bundled) or a TorchScript file path",
    )
    outputs: Literal["logits", "probabilities"] = "logits"
    labels: Labels | None = None
    view: Literal["nsfw", "moderation"] | None = Field(
        default=None,
        description="expose the bundled model only through 2 ('nsfw') or 5 ('moderation') "
        "concepts, each the summed probability of a fixed group of ImageNet classes",
    )
    device: str | None = Field(
        default=None,
        pattern=r"^(cpu|cuda(:\d{1,2})?)$",
        description="cpu, cuda or cuda:N; a CUDA device this machine lacks is refused",
    )


class ClarifaiOracleSpec(CloudCredential):
    kind: Literal["clarifai"]
    model_id: str = Field(default="nsfw-recognition", min_length=1, max_length=MAX_NAME)
    version_id: str | None = Field(default=None, max_length=MAX_NAME)
    user_id: str = Field(default="clarifai", max_length=MAX_NAME)
    app_id: str = Field(default="main", max_length=MAX_NAME)
    max_images_per_request: int = Field(default=128, ge=1, le=128)


class CustomVisionOracleSpec(CloudCredential):
    kind: Literal["customvision"]
    project_id: str = Field(min_length=1, max_length=MAX_NAME)
    published_name: str = Field(min_length=1, max_length=MAX_NAME)

    @model_validator(mode="after")
    def _endpoint_required(self) -> CustomVisionOracleSpec:
        if self.endpoint is None:
            raise ValueError("a customvision oracle needs its prediction endpoint")
        return self


OracleSpec = Annotated[
    TorchOracleSpec | ClarifaiOracleSpec | CustomVisionOracleSpec, Field(discriminator="kind")
]


class ProgramSpec(Strict):
    input_size: int | None = Field(default=None, ge=32, le=512)
    target_size: int | None = Field(default=None, ge=4, le=512)
    basis: Literal["pixel", "bilinear", "dct"] | None = None
    resolution: int | None = Field(default=None, ge=1, le=512)

    @model_validator(mode="after")
    def _sizes(self) -> ProgramSpec:
        if self.input_size and self.target_size and self.target_size > self.input_size:
            raise ValueError("program.target_size must not exceed program.input_size")
        if self.input_size and self.resolution and self.resolution > self.input_size:
            raise ValueError("program.resolution must not exceed program.input_size")
        return self


class MappingSpec(Strict):
    method: Literal["frequency", "random", "learned"] | None = None
    labels_per_class: int | None = Field(default=None, ge=1, le=100)
    remap_every: int = Field(default=0, ge=0, le=100_000)
    views: list[Literal["full"]] | None = Field(
        default=None,
        max_length=1,  # one view exists, so no view can be given twice
        description="further fixed views of every image the learned read-out sees beside the "
        "programmed frame (mapping.method 'learned' only): 'full' is the image resized to "
        "fill the whole frame, without the program; each view costs one more query per image, "
        "in training once and at every prediction; []: none",
    )


class LossSpec(Strict):
    kind: Literal["focal", "ce"] = "focal"
    gamma: float = Field(default=2.0, ge=0, le=10)
    class_balance: bool = True


class OptimizerSpec(Strict):
    estimator: Literal["bar", "antithetic", "spsa", "white_box", "cma"] | None = None
    q: int | None = Field(default=None, ge=1, le=1000)
    beta: float | None = Field(default=None, gt=0, le=10)
    scale: float | None = Field(default=None, gt=0)
    lr: float | None = Field(default=None, gt=0, le=100)
    lr_decay: float | None = Field(default=None, gt=0, le=1)
    optimizer: Literal["sgd", "adam"] | None = None
    clip: float | None = Field(default=None, gt=0)
    batch_size: int | None = Field(default=None, ge=1, le=1024)
    iterations: int | None = Field(default=None, ge=0, le=1_000_000)
    eval_every: int | None = Field(default=None, ge=1, le=1_000_000)
    patience: int | None = Field(
        default=None,
        ge=0,
        le=1_000_000,
        description="stop after this many evaluation points without a better program, or "
        "sooner when the rest of the budget cannot change the choice; 0: never stop early. "
        "Above 5, programs are tested at a stricter level after the 5th evaluation point",
    )
    lr_race: list[Annotated[float, Field(gt=0, le=100)]] | None = Field(
        default=None,
        max_length=3,
        description="further step sizes raced against lr (data.validation 'cross_fit' only): "
        "each trains its own cross-fitted programs for the first third of the run, then the "
        "one that validated best goes on; []: no race",
    )


class BudgetSpec(Strict):
    max_queries: int | None = Field(default=None, ge=1, le=10**12)
    max_cost_usd: float | None = Field(default=None, ge=0, le=10**9)


class DataSpec(Strict):
    """How the service splits a data set that carries no split of its own."""

    val_fraction: float = Field(default=0.2, ge=0, lt=1)
    test_fraction: float = Field(default=0.2, ge=0, lt=1)
    max_train: int | None = Field(
        default=None, ge=1, le=10_000_000, description="cap on training images"
    )
    max_test: int | None = Field(
        default=None, ge=1, le=10_000_000, description="cap on test images"
    )
    baselines: bool = Field(default=True, description="measure chance, blank program and probe")
    validation: Literal["holdout", "cross_validation", "cross_fit"] | None = Field(
        default=None,
        description="'holdout': validation images (the data set's own, or held out of its "
        "training images); 'cross_validation': k-fold over the training images, none held "
        "out (learned read-out only); 'cross_fit': two programs, each trained on one half of "
        "the labelled images and validated on the other (learned read-out only)",
    )

    @model_validator(mode="after")
    def _fractions(self) -> DataSpec:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("data.val_fraction + data.test_fraction must be below 1")
        return self


class JobSpec(Strict):
    dataset_id: str | None = Field(default=None, max_length=MAX_ID)
    oracle: OracleSpec
    program: ProgramSpec = Field(default_factory=ProgramSpec)
    mapping: MappingSpec = Field(default_factory=MappingSpec)
    loss: LossSpec = Field(default_factory=LossSpec)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "dataset_id": "ds_…",
                    "oracle": {"kind": "torch", "model": "efficientnet-lite0"},
                    "program": {"input_size": 224, "target_size": 64},
                    "mapping": {"method": "frequency", "labels_per_class": 10},
                    "loss": {"kind": "focal", "gamma": 2.0},
                    "optimizer": {
                        "estimator": "bar",
                        "q": 25,
                        "beta": 0.01,
                        "lr": 0.05,
                        "batch_size": 10,
                        "iterations": 500,
                    },
                    "budget": {"max_queries": 100000, "max_cost_usd": 50.0},
                    "seed": 0,
                }
            ]
        },
    )


def error_fields(exc: Exception) -> list[str]:
    """Human lines naming each invalid field of a pydantic ValidationError."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return [str(exc)]
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        lines.append(f"{loc or 'spec'}: {err['msg']}")
    return lines
