"""What can be checked of the Docker deployment without a Docker engine: the compose file's
services, health checks, volumes and environment; that every command the images run is a real
`reprogram` command with real options; that the image runs as an unprivileged user."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from app.cli import main as cli
from app.config.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
TORCH_PIN = "torch==2.13.0"
VAR = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    return out


def exec_form(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else shlex.split(args)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.groups()
        if env.get(name):
            return env[name]
        if op == "?":
            raise LookupError(f"{name}: {arg}")
        return arg if op == "-" else ""

    return VAR.sub(one, value)


def help_of(command: list[str]) -> int:
    """Exit code of ``reprogram <subcommand> <options...> --help``: 0 only if the subcommand
    exists and accepts every option given (click refuses unknown ones before the help)."""
    assert command[0] == "reprogram", command
    return CliRunner().invoke(cli.app, [*command[1:], "--help"]).exit_code


# --- compose ------------------------------------------------------------------------------------


def test_compose_has_postgres_api_and_worker_with_health_checks(compose):
    services = compose["services"]
    assert set(services) == {"postgres", "api", "worker"}
    assert services["postgres"]["image"].startswith("postgres:15")
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    for name, service in services.items():
        test = service["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
    # Ordering: the API waits for a healthy database; workers for the API, which migrates.
    assert services["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["api"]["condition"] == "service_healthy"


def test_named_volumes_hold_the_database_and_the_shared_data_dir(compose):
    volumes = set(compose["volumes"])
    services = compose["services"]
    mounts = {
        name: dict(v.split(":")[:2] for v in s.get("volumes", [])) for name, s in services.items()
    }
    assert mounts["postgres"].get("pgdata") == "/var/lib/postgresql/data"
    for name in ("api", "worker"):
        target = mounts[name]["data"]
        assert target == services[name]["environment"]["REPROGRAM_DATA_DIR"], name
    assert {"pgdata", "data"} <= volumes
    assert all(src in volumes for m in mounts.values() for src in m), mounts


def test_the_worker_scales(compose):
    """`docker compose up --scale worker=3`: no fixed name, no host port to collide on."""
    worker = compose["services"]["worker"]
    assert "container_name" not in worker and "ports" not in worker


def test_every_compose_command_is_a_real_reprogram_command(compose):
    commands = {n: s["command"] for n, s in compose["services"].items() if "command" in s}
    assert set(commands) == {"api", "worker"}
    assert commands["api"][:2] == ["reprogram", "serve"]
    assert commands["worker"][:2] == ["reprogram", "worker"]
    for name, command in commands.items():
        command = exec_form(command) if isinstance(command, str) else command
        assert help_of(command) == 0, (name, command)
    assert help_of(["reprogram", "serve", "--no-such-option"]) != 0  # the check can fail


def test_the_api_health_check_asks_the_port_it_serves(compose):
    api = compose["services"]["api"]
    port = api["command"][api["command"].index("--port") + 1]
    assert f"127.0.0.1:{port}/healthz" in " ".join(api["healthcheck"]["test"])
    assert any(p.endswith(f":{port}") for p in api["ports"])


def test_production_environment_is_valid_settings(compose, monkeypatch):
    env = compose["services"]["api"]["environment"]
    assert env == compose["services"]["worker"]["environment"]
    for key in env:  # Settings ignores unknown REPROGRAM_* names: a typo would pass silently
        assert key.removeprefix("REPROGRAM_").lower() in Settings.model_fields, key
    # The server key is a required variable: compose stops with a message without it.
    assert env["REPROGRAM_SECRET_KEY"].startswith("${REPROGRAM_SECRET_KEY:?")
    with pytest.raises(LookupError, match="REPROGRAM_SECRET_KEY"):
        interpolate(env["REPROGRAM_SECRET_KEY"], {})
    for key in [k for k in Settings.model_fields]:
        monkeypatch.delenv(f"REPROGRAM_{key.upper()}", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, interpolate(str(value), {"REPROGRAM_SECRET_KEY": "k"}))
    settings = Settings()
    assert settings.mode == "production" and not settings.is_sqlite
    # The URL names the postgres service and the database and user it creates.
    pg = compose["services"]["postgres"]["environment"]
    url = interpolate(env["REPROGRAM_DATABASE_URL"], {})
    assert url.startswith(f"postgresql://{pg['POSTGRES_USER']}:")
    assert url.endswith(f"@postgres:5432/{pg['POSTGRES_DB']}")


# --- Dockerfile ---------------------------------------------------------------------------------


def test_the_image_is_slim_and_runs_as_an_unprivileged_user():
    steps = instructions()
    assert steps[0] == ("FROM", "python:3.11-slim")
    users = [args for kw, args in steps if kw == "USER"]
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    created = " ".join(args for kw, args in steps if kw == "RUN")
    if user.isdigit():
        assert f"--uid {user}" in created, "USER names a uid that no RUN creates"
    else:
        assert re.search(rf"useradd\b[^&;]*\b{user}\b", created), "USER names no created user"


def test_torch_comes_first_pinned_from_the_cpu_index():
    runs = [args for kw, args in instructions() if kw == "RUN"]
    torch = next(i for i, r in enumerate(runs) if "torch" in r)
    assert TORCH_PIN in runs[torch].split()
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs[torch]
    project = next(i for i, r in enumerate(runs) if re.search(r"pip install .*(-e )?\.(\s|$)", r))
    assert torch < project
    assert TORCH_PIN in (ROOT / "Makefile").read_text()  # the same torch as `make setup`


def test_the_image_copies_what_exists_and_is_not_ignored():
    ignored = [
        p.strip().rstrip("/")
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    assert {".venv", ".git"} <= set(ignored)
    copied = []
    for kw, args in instructions():
        if kw == "COPY":
            parts = exec_form(args)
            copied += [p for p in parts[:-1] if not p.startswith("--")]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # Every package the wheel ships must be in the image too.
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages | {"pyproject.toml"} <= set(copied), packages - set(copied)
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert not any(fnmatch(source, pattern) for pattern in ignored), source
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]
    assert readme in copied  # `pip install` needs the readme pyproject.toml declares


def test_the_image_command_and_health_check_are_real():
    steps = dict(instructions())
    command = exec_form(steps["CMD"])
    assert command[:2] == ["reprogram", "serve"] and help_of(command) == 0
    assert "ENTRYPOINT" not in steps
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["reprogram"] == "app.cli.main:main"
    port = command[command.index("--port") + 1]
    assert f"127.0.0.1:{port}/healthz" in steps["HEALTHCHECK"]
    assert f"EXPOSE {port}" in {f"{k} {v}" for k, v in instructions()}
    # The data directory is a volume, and it is where the settings look.
    env = steps["ENV"]
    data_dir = re.search(r"REPROGRAM_DATA_DIR=(\S+)", env).group(1)
    assert data_dir in json.loads(steps["VOLUME"])


def test_health_endpoints_exist(tmp_path):
    from app.api.app import create_app

    paths = set(create_app(Settings(data_dir=tmp_path)).openapi()["paths"])
    assert {"/healthz", "/readyz"} <= paths


def test_stalled_and_waiting_jobs_are_looked_for_every_five_seconds():
    """The periodic requeue of a dead worker's jobs, and the wake of jobs whose quota wait is
    over, run every 5 s, all minute long (croniter reads a sixth field as seconds; the
    expression once ran only every 5 minutes)."""
    import itertools
    from datetime import datetime

    from croniter import croniter

    from app.config.settings import Settings
    from app.jobs.queue import make_queue_app

    app = make_queue_app(Settings(secret_key="k"), db=None)  # type: ignore[arg-type]
    tasks = app.periodic_registry.periodic_tasks.values()
    assert sorted(t.task.name for t in tasks) == ["requeue_stalled", "wake_waiting"]
    for task in tasks:
        it = croniter(task.cron, datetime(2026, 1, 1, 0, 1, 2))
        ticks = [it.get_next(datetime) for _ in range(12)]
        gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(ticks)}
        assert gaps == {5.0}
