"""Refuse at ``POST /v1/jobs`` what would only fail once the job runs: a device the machine
lacks, a data set too small for the split, and a budget below the plan's minimum.

The minimum is the runner's own (``app.jobs.runner.minimum_queries``: the same split, the same
resolved spec, the same trainer plan), computed from the stored data set's labels alone.
"""

from __future__ import annotations

from pathlib import Path

from adapters.errors import ConfigurationError
from app.config.spec import JobSpec, TorchOracleSpec
from app.data.loading import DataError
from app.data.store import stored_labels
from app.jobs.runner import PlanError, minimum_queries
from app.services.jobs import InvalidRequest
from app.storage.models import Dataset

SECTIONS = ("data.", "mapping.", "optimizer.", "program.", "budget.", "loss.", "oracle.")


def oracle_label_count(spec: JobSpec, n_classes: int) -> int:
    """How many labels the oracle will answer with, as far as the spec tells before the
    oracle is built: the bundled model's 1,000 ImageNet classes or its view's concepts, the
    labels the spec lists; otherwise (a cloud model's concepts, learned from its first
    answer) as many as the task has classes, which the plan's minimum does not depend on."""
    oracle = spec.oracle
    if oracle.labels is not None:
        return len(oracle.labels)
    if isinstance(oracle, TorchOracleSpec):
        from adapters.label_groups import fold_matrix, imagenet_labels

        return len(fold_matrix(oracle.view)[0]) if oracle.view else len(imagenet_labels())
    return max(2, n_classes)


def check_device(spec: JobSpec) -> None:
    if isinstance(spec.oracle, TorchOracleSpec) and spec.oracle.device:
        from adapters.torch_local import check_device as check

        try:
            check(spec.oracle.device)
        except ConfigurationError as err:
            raise InvalidRequest(f"oracle.device: {err}") from err


def check_feasible(
    spec: JobSpec, dataset: Dataset, data_dir: Path, *, query_cap: int | None, price: float
) -> None:
    """Raise InvalidRequest (naming the field) when the job could not run as submitted."""
    check_device(spec)
    labels = stored_labels(dataset, data_dir)
    n_labels = oracle_label_count(spec, len(labels.classes))
    try:
        floor = minimum_queries(spec, labels, n_labels=n_labels, provider=spec.oracle.kind)
    except (DataError, PlanError) as err:
        message = str(err)
        named = message.startswith(SECTIONS)  # "data.test_fraction: ...", "mapping.method: ..."
        raise InvalidRequest(message if named else f"dataset_id: {message}") from err
    if query_cap is None or floor <= query_cap:
        return
    b = spec.budget
    by_cost = b.max_cost_usd is not None and (b.max_queries is None or b.max_queries > query_cap)
    field = "budget.max_cost_usd" if by_cost else "budget.max_queries"
    allows = f"${b.max_cost_usd:g} buys {query_cap} queries" if by_cost else f"{query_cap} queries"
    raise InvalidRequest(
        f"{field}: {allows}, below the {floor} this job needs at least (its mapping and "
        f"evaluation on {dataset.n_samples} images, and any views of them, before any "
        "training); the minimum is "
        f"{floor} queries" + (f" (${floor * price:.4f})" if by_cost else "")
    )
