"""``reprogram``: train, demo, serve, worker, token.

Bad input ends with a one-line message naming the problem and exit code 2 (a job spec that
does not validate, a missing or corrupt data set, an oracle that cannot be built, a budget
too small); a job that fails mid-run exits 1 after writing what it has. No tracebacks.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from adapters.errors import ConfigurationError, OracleError
from app.cli.common import console, err_console, fail, read_json
from app.cli.remote import jobs_app
from app.config.spec import JobSpec, error_fields
from app.data.loading import DataError
from app.jobs.runner import PlanError, PreparedJob

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Reprogram black-box image classifiers for new tasks.",
)
token_app = typer.Typer(no_args_is_help=True, help="API tokens.")
app.add_typer(token_app, name="token")
app.add_typer(jobs_app, name="jobs")  # jobs on a server, through app.client


def load_spec(path: Path) -> JobSpec:
    raw = read_json(path)
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as err:
        raise fail(f"{path}: invalid job spec\n  " + "\n  ".join(error_fields(err))) from None


class _ProgressView:
    """A rich progress bar over iterations, with queries, loss and accuracy."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("it {task.completed:.0f}/{task.total:.0f}"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.task: Any = None

    def prepared(self, job: PreparedJob) -> None:
        for note in job.notes:
            console.print(f"  [dim]chose[/] {note}", highlight=False)
        planned = sum(job.trainer.planned_queries().values())
        console.print(
            f"  [dim]plan[/] {planned:,} queries: {job.trainer.planned_queries()}", highlight=False
        )
        self.task = self.progress.add_task("training", total=job.trainer.config.iterations, info="")

    def row(self, job: PreparedJob, row: dict[str, Any]) -> None:
        val = row.get("val_acc")
        info = (
            f"queries {row['queries']:,}  loss {row.get('loss', float('nan')):.3f}  "
            f"val acc {val:.1%}"
            if val is not None
            else f"queries {row['queries']:,}"
        )
        self.progress.update(self.task, completed=job.trainer.progress_iteration, info=info)


def run_job(spec: JobSpec, dataset_loader: Any, out: Path) -> dict[str, Any]:
    """Shared by ``train`` and ``demo``: run, show progress, write the artifacts."""
    from app.jobs.artifacts import write_outputs
    from app.jobs.local import run_local

    try:
        dataset = dataset_loader()
    except DataError as err:
        raise fail(str(err)) from None
    view = _ProgressView()
    try:
        with view.progress:
            run = run_local(spec, dataset, on_prepared=view.prepared, on_row=view.row)
    except (ConfigurationError, DataError, PlanError) as err:
        raise fail(str(err)) from None
    except OracleError as err:  # e.g. bad credentials found while discovering labels
        raise fail(f"{type(err).__name__}: {err}") from None
    out.mkdir(parents=True, exist_ok=True)
    with (out / "metrics.jsonl").open("w") as fh:
        for row in run.rows:
            fh.write(json.dumps(row) + "\n")
    write_outputs(out, run.arrays, run.rows, run.result)
    show_result(run.result, out)
    return run.result


def show_result(result: dict[str, Any], out: Path) -> None:
    table = Table(title=f"result ({result['status']})")
    table.add_column("method")
    table.add_column("test accuracy", justify="right")
    table.add_column("queries", justify="right")
    for name, b in result["baselines"].items():
        table.add_row(name.replace("_", " "), f"{b['accuracy']:.1%}", f"{b['queries']:,}")
    acc = result["test_accuracy"]
    table.add_row(
        "[bold]reprogrammed (this job)",
        f"[bold]{acc:.1%}" if acc is not None else "-",
        f"{result['queries']:,} total",
    )
    console.print(table)
    probe = result["baselines"].get("linear_probe")
    if acc is not None and probe is not None:
        verdict = "beats" if acc > probe["accuracy"] else "does not beat"
        console.print(
            f"The reprogrammed model {verdict} the linear probe "
            f"({acc:.1%} vs {probe['accuracy']:.1%})."
        )
    v = result.get("validation")
    validated = result.get("best_val_accuracy") is not None  # the plan's, or what ran?
    if v and validated:
        how = {
            "cross_validation": "cross-validation over",
            "cross_fit": "cross-fitted programs validated on",
        }.get(v["method"], "validated on")
        console.print(f"{how.capitalize()} {v['images']} images ({v['source']}).")
    elif v:
        console.print("No validation ran: the job ended before its first evaluation.")
    race = result.get("step_size_race")
    if race and race["kept"] is not None:
        console.print(f"The step-size race kept lr {race['kept']:g} (of {race['step_sizes']}).")
    if result.get("views"):
        console.print(
            f"The read-out also uses the {' and '.join(result['views'])} view: a prediction "
            f"costs {result['queries_per_prediction']} queries per image."
        )
    probe = result.get("returned") == "linear_probe" and not result.get("views")
    if probe and validated and result.get("best_iteration") == 0:
        console.print("No program beat the linear probe on validation: the probe is returned.")
    if result.get("stopped_early"):
        console.print(
            f"Stopped early: {result['stopped_early']}; "
            f"{result['unspent_queries']:,} queries not spent."
        )
    console.print(
        f"queries {result['queries']:,} in {result['requests']:,} requests, "
        f"cost ${result['cost_usd']:.4f}; outputs in {out}/"
    )
    if result.get("error"):
        err_console.print(f"[red]{result['error']}[/]")


@app.command()
def train(
    config: Annotated[Path, typer.Option(help="job spec (JSON)")],
    data: Annotated[Path, typer.Option(help="data set: folder, .zip or .npz")],
    out: Annotated[Path, typer.Option(help="output directory")],
) -> None:
    """Run one job in this process and write program.npz, metrics.jsonl, result.json,
    curve.png and program.png."""
    from app.data.loading import load_dataset

    spec = load_spec(config)
    result = run_job(spec, lambda: load_dataset(data), out)
    if result["status"] == "failed":
        raise typer.Exit(1)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="output directory")] = Path("demo-output"),
    max_queries: Annotated[int, typer.Option(help="query budget")] = 40_000,
    seed: int = 0,
) -> None:
    """Reprogram the bundled ImageNet model to read handwritten digits (black box)."""
    from app.cli.demo import demo_spec, mnist_digits

    console.print(
        "[bold]reprogram demo[/]: EfficientNet-Lite0 (ImageNet, 1,000 labels), "
        "queried as a black box, learns MNIST digits from 20 labelled images per "
        "class; tested on 1,500 held-out digits.",
        highlight=False,
    )
    run_job(demo_spec(max_queries, seed), lambda: mnist_digits(seed=seed), out)


def _settings():  # type: ignore[no-untyped-def]
    from pydantic import ValidationError as SettingsError

    from app.config.settings import Settings

    try:
        return Settings()
    except SettingsError as err:
        raise fail("invalid settings: " + "; ".join(error_fields(err))) from None


@app.command()
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="API processes sharing the port (uvicorn workers); about one per core",
        ),
    ] = 1,
    access_log: Annotated[
        bool,
        typer.Option(
            "--access-log/--no-access-log",
            help="a log line per request (a third of a status read's CPU; request counts "
            "and latencies are in /metrics either way)",
        ),
    ] = False,
) -> None:
    """The REST API; in the embedded (SQLite) mode it also runs the jobs."""
    import uvicorn

    from app.api.app import create_app
    from app.storage.migrate import upgrade

    settings = _settings()
    console.print(
        f"reprogram API on http://{host}:{port} (docs at /docs); database "
        f"{'SQLite' if settings.is_sqlite else 'PostgreSQL'}, data in "
        f"{settings.data_dir}; {workers} API process{'es' if workers > 1 else ''}",
        highlight=False,
    )
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "info",
        "access_log": access_log,
        # Event streams stay open until their job ends: on shutdown, close them after 10 s.
        "timeout_graceful_shutdown": 10,
    }
    if workers == 1:
        uvicorn.run(create_app(settings), **options)
        return
    # Several processes: this one supervises them, migrates the database once before they
    # start and, in the embedded mode, runs the jobs (so that the concurrency limit holds
    # for the whole server); the workers only answer requests.
    from app.api.app import prepare_workers

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    with prepare_workers(settings):
        uvicorn.run(
            "app.api.app:worker_app",
            factory=True,
            workers=workers,
            # A worker that does not answer the supervisor's ping in time is killed and
            # started again: starting one (importing torch) takes seconds on a busy machine.
            timeout_worker_healthcheck=60,
            **options,
        )


@app.command()
def worker(
    concurrency: int = typer.Option(2, min=1, max=64),
    nice: int = typer.Option(
        19, min=0, max=19, help="CPU niceness: training is batch work, the API answers first"
    ),
) -> None:
    """A queue worker (PostgreSQL mode): runs jobs from the procrastinate queue."""
    from app.jobs.queue import run_worker
    from app.storage.db import Database
    from app.storage.migrate import upgrade

    # Operators read a worker's log: which jobs it took, resumed, finished (never secrets).
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    settings = _settings()
    if settings.is_sqlite:
        raise fail(
            "`reprogram worker` needs REPROGRAM_DATABASE_URL=postgresql://...; in the "
            "embedded SQLite mode `reprogram serve` runs the jobs itself"
        )
    upgrade(settings.db_url)
    # Only once the settings are known to be good: a refused start changes nothing, not even
    # the priority of the process that asked (a test runner invoking the CLI in-process).
    if nice and hasattr(os, "nice"):  # a worker beside the API must not starve it (2 cores)
        os.nice(nice)
    run_worker(settings, Database(settings.db_url), concurrency)


@app.command()
def migrate() -> None:
    """Bring the database to the newest schema."""
    from app.storage.migrate import upgrade

    settings = _settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    console.print("database is up to date")


def _token_db():  # type: ignore[no-untyped-def]
    from app.storage.db import Database
    from app.storage.migrate import upgrade

    settings = _settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    return Database(settings.db_url)


@token_app.command("create")
def token_create(tenant: Annotated[str, typer.Option(help="tenant name")]) -> None:
    """Create an API token for TENANT (created on first use); prints it on the last line."""
    from app.services.auth import create_token

    if not tenant.strip():
        raise fail("--tenant must not be empty")
    db = _token_db()
    with db.session() as s:
        token = create_token(s, tenant_name=tenant.strip())
    db.dispose()
    print(token)


@token_app.command("list")
def token_list(
    tenant: Annotated[str | None, typer.Option(help="only this tenant's tokens")] = None,
) -> None:
    """The tokens: id, tenant, created, last 4 characters, revoked (never the secret)."""
    from app.services.auth import list_tokens

    db = _token_db()
    with db.session() as s:
        rows = list_tokens(s, tenant)
    db.dispose()
    table = Table("id", "tenant", "created", "ends with", "revoked")
    for t in rows:
        table.add_row(
            t.id,
            t.tenant,
            f"{t.created_at:%Y-%m-%d %H:%M:%S}",
            f"…{t.hint}" if t.hint else "-",
            f"{t.revoked_at:%Y-%m-%d %H:%M:%S}" if t.revoked_at else "",
        )
    console.print(table)


@token_app.command("revoke")
def token_revoke(
    token: Annotated[
        str | None, typer.Argument(help="the token, or its id (tk_…) from `token list`")
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="revoke every token of this tenant")] = None,
) -> None:
    """Revoke a token, or all of a tenant's: every API process refuses it from the next
    request on."""
    from app.services.auth import UnknownToken, revoke

    if (token is None) == (tenant is None):
        raise fail("name a TOKEN or --tenant NAME (one of them)")
    db = _token_db()
    try:
        with db.session() as s:
            n = revoke(s, token=token, tenant_name=tenant)
    except UnknownToken as err:
        raise fail(str(err)) from None
    finally:
        db.dispose()
    console.print(f"revoked {n} token{'s' if n != 1 else ''}", highlight=False)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
