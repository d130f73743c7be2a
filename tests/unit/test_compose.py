"""docker-compose.yml and the Dockerfile, checked without a Docker engine (PyYAML + text)."""

from __future__ import annotations

import shlex

import pytest
import yaml

from tests.conftest import REPO_ROOT
from worker.settings import Settings

PRODUCT_VARIABLES = {
    "DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "S3_BUCKET", "S3_PREFIX", "AWS_REGION",
    "S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "NHI_HMAC_KEY",
}
APP_SERVICES = ("migrate", "worker", "beat", "flower", "health", "demo")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def _command(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def test_the_stack_has_every_service(compose):
    services = compose["services"]
    assert set(services) >= {"postgres", "redis", "s3", *APP_SERVICES}
    assert services["postgres"]["image"] == "postgres:15"
    assert services["redis"]["image"].startswith("redis:7")
    assert services["s3"]["image"].startswith("motoserver/moto")


def test_commands_are_the_documented_interfaces(compose):
    services = compose["services"]
    assert _command(services["worker"])[:4] == ["celery", "-A", "worker.app", "worker"]
    assert _command(services["beat"])[:4] == ["celery", "-A", "worker.app", "beat"]
    assert _command(services["flower"])[:4] == ["celery", "-A", "worker.app", "flower"]
    assert "5555:5555" in services["flower"]["ports"]
    assert _command(services["migrate"]) == ["indici-ingest", "migrate"]
    health = _command(services["health"])
    assert health[:2] == ["indici-ingest", "serve-health"] and "8080" in health
    assert "8080:8080" in services["health"]["ports"]


def test_workers_start_after_the_migration(compose):
    for name in ("worker", "beat"):
        assert compose["services"][name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}


def test_app_services_get_every_product_variable(compose):
    aliases = {field.validation_alias for field in Settings.model_fields.values()}
    for name in APP_SERVICES:
        environment = compose["services"][name]["environment"]
        assert PRODUCT_VARIABLES <= set(environment), name
        assert set(environment) <= aliases | {"AWS_SESSION_TOKEN"}, f"{name}: a variable Settings does not read"


def test_dockerfile_installs_the_project_with_pip():
    text = (REPO_ROOT / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert instructions[0][0] == "FROM" and instructions[0][1].startswith("python:3.1")
    assert any(i[0] == "COPY" and "pyproject.toml" in i[1] for i in instructions)
    assert any(i[0] == "RUN" and "pip install" in i[1] for i in instructions)
    assert any(i[0] == "USER" for i in instructions)  # not root


def test_the_demo_profile_fills_the_bucket_and_runs_the_nightly_job(compose):
    services = compose["services"]
    demo = services["demo"]
    assert demo["profiles"] == ["demo"]
    assert all("profiles" not in services[name] for name in services if name != "demo")  # `up` alone: no demo
    command = _command(demo)
    assert command[:3] == ["indici-ingest", "demo", "--external"]  # the stack's bucket and worker
    assert demo["restart"] == "no"
    assert demo["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert demo["depends_on"]["s3-init"] == {"condition": "service_completed_successfully"}
    assert "worker" in demo["depends_on"]
    from worker.cli import build_parser

    args = build_parser().parse_args(command[1:])
    assert args.command == "demo" and args.external and not args.inline


def test_notify_urls_reach_the_app_services(compose):
    for name in APP_SERVICES:
        assert "NOTIFY_URLS" in compose["services"][name]["environment"]
