"""``reprogram jobs``: jobs on a running server, through :mod:`app.client`.

The server and token come from ``--server`` / ``--token`` or ``REPROGRAM_SERVER`` /
``REPROGRAM_TOKEN``. A refused request ends with the API's own message and exit code 2; a
watched job that fails or is cancelled exits 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table

from app.cli.common import console, err_console, fail, read_json
from app.client import DEFAULT_SERVER, ApiError, AuthError, Client, Job

jobs_app = typer.Typer(
    no_args_is_help=True,
    help="Jobs on a reprogram server (REPROGRAM_SERVER, REPROGRAM_TOKEN).",
)

JobIdArg = Annotated[str, typer.Argument(help="job id (job_…)")]
ServerOpt = Annotated[
    str, typer.Option("--server", envvar="REPROGRAM_SERVER", help="the server's URL")
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="REPROGRAM_TOKEN",
        help="API token (reprogram token create --tenant NAME)",
        show_default=False,
    ),
]


@contextmanager
def connect(server: str, token: str | None) -> Iterator[Client]:
    """A client, with every refusal turned into a one-line message and exit code 2."""
    if not token:
        raise fail("no API token: pass --token or set REPROGRAM_TOKEN")
    try:
        with Client(server, token) as client:
            yield client
    except AuthError as err:
        raise fail(f"{server} refused the token: {err}") from None
    except ApiError as err:
        raise fail(str(err)) from None
    except httpx.HTTPError as err:
        raise fail(f"cannot reach {server}: {err}") from None


def _info(job: Job) -> str:
    row = job.metrics
    budget = f"/{job.max_queries:,}" if job.max_queries else ""
    text = f"queries {job.queries:,}{budget}"
    if job.waiting:
        return f"{text}  waiting for the oracle's quota until {job.waiting.get('until')}"
    if row.get("loss") is not None:
        text += f"  loss {row['loss']:.3f}"
    if row.get("val_acc") is not None:
        text += f"  val acc {row['val_acc']:.1%}"
    return text


def watch_job(client: Client, job_id: str, interval: float = 1.0) -> Job:
    """Follow a job with the same progress bar as ``reprogram train`` until it ends."""
    from app.cli.main import _ProgressView  # the train command's bar, columns and console

    view = _ProgressView()
    shown = 0
    task: Any = None

    def update(job: Job) -> None:
        nonlocal shown, task
        for note in job.choices[shown:]:
            view.progress.console.print(f"  [dim]chose[/] {note}", highlight=False)
        shown = max(shown, len(job.choices))
        if task is None:
            task = view.progress.add_task(job.status, total=job.iterations or 0, info="")
        view.progress.update(
            task,
            description=job.status,
            total=job.iterations or 0,
            completed=job.iteration,
            info=_info(job),
        )

    with view.progress:
        job = client.wait(job_id, update, interval=interval)
    show_job_result(job)
    return job


def show_job_result(job: Job) -> None:
    result = job.result or {}
    baselines: dict[str, Any] = result.get("baselines") or {}
    table = Table(title=f"job {job.id} ({job.status})")
    table.add_column("method")
    table.add_column("test accuracy", justify="right")
    table.add_column("queries", justify="right")
    for name, b in baselines.items():
        table.add_row(name.replace("_", " "), f"{b['accuracy']:.1%}", f"{b['queries']:,}")
    acc = job.test_accuracy
    table.add_row(
        "[bold]reprogrammed (this job)",
        f"[bold]{acc:.1%}" if acc is not None else "-",
        f"{job.queries:,} total",
    )
    console.print(table)
    console.print(
        f"queries {job.queries:,} in {job.requests:,} requests, cost ${job.cost_usd:.4f}",
        highlight=False,
    )
    if job.error:
        err_console.print(f"[red]{job.error}[/]", highlight=False)


def _exit_for(job: Job) -> None:
    if job.status in ("failed", "cancelled"):
        raise typer.Exit(1)


@jobs_app.command()
def submit(
    data: Annotated[
        str, typer.Option(help="data set: a .zip, .npz or folder to upload, or a ds_… id")
    ],
    config: Annotated[Path, typer.Option(help="job spec (JSON), as for reprogram train")],
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    watch: Annotated[bool, typer.Option(help="follow the job until it ends")] = False,
) -> None:
    """Upload a data set (or name a stored one) and start a job on it.

    Prints the job id on the last line (without --watch)."""
    spec = read_json(config)
    if not isinstance(spec, dict):
        raise fail(f"{config}: a job spec is a JSON object")
    path = Path(data)
    if not path.exists() and not data.startswith("ds_"):
        raise fail(f"{data}: no such file or folder")
    with connect(server, token) as client:
        if path.exists():
            ds = client.upload(path)
            console.print(
                f"data set {ds.id}: {ds.n_samples} images, classes {', '.join(ds.classes)}",
                highlight=False,
            )
            dataset_id = ds.id
        else:
            dataset_id = data
        job = client.submit(spec, dataset_id)
        console.print(f"job {job.id} {job.status}", highlight=False)
        if watch:
            job = watch_job(client, job.id)
    if not watch:
        print(job.id)
    _exit_for(job)


@jobs_app.command("watch")
def watch_command(
    job_id: JobIdArg,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
) -> None:
    """Follow a job with a progress bar until it ends (exit 1 if it failed or was cancelled)."""
    with connect(server, token) as client:
        job = watch_job(client, job_id)
    _exit_for(job)


@jobs_app.command()
def download(
    job_id: JobIdArg,
    out: Annotated[
        Path | None, typer.Option(help="where to write it (default program.npz / .png)")
    ] = None,
    format: Annotated[str, typer.Option(help="npz (the program file) or png (an image)")] = "npz",
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
) -> None:
    """Download a job's program."""
    if format not in ("npz", "png"):
        raise fail("--format must be npz or png")
    with connect(server, token) as client:
        path = client.download(job_id, out, format=format)
    console.print(f"wrote {path}", highlight=False)


@jobs_app.command("list")
def list_command(
    limit: Annotated[int, typer.Option(min=1, max=200)] = 20,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
) -> None:
    """The tenant's jobs, newest first."""
    with connect(server, token) as client:
        page = client.jobs(limit, offset)
    table = Table(title=f"jobs {offset + 1}–{offset + len(page.items)} of {page.total}")
    for col in ("id", "status", "progress", "queries", "cost $", "test acc"):
        table.add_column(col, justify="left" if col in ("id", "status") else "right")
    for job in page.items:
        acc = job.test_accuracy
        table.add_row(
            job.id,
            job.status,
            f"{job.iteration}/{job.iterations or '?'}",
            f"{job.queries:,}",
            f"{job.cost_usd:.4f}",
            f"{acc:.1%}" if acc is not None else "-",
        )
    console.print(table)


@jobs_app.command()
def cancel(
    job_id: JobIdArg,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
) -> None:
    """Cancel a job: a queued one at once, a running one within an iteration."""
    with connect(server, token) as client:
        job = client.cancel(job_id)
    console.print(f"job {job.id} {job.status}", highlight=False)
