"""docker-compose.yml and the Dockerfile, checked without a Docker engine (PyYAML + text)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT
from worker.settings import Settings

PRODUCT_VARIABLES = {
    "DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "S3_BUCKET", "S3_PREFIX", "AWS_REGION",
    "S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "NHI_HMAC_KEY",
}
APP_SERVICES = ("migrate", "worker", "worker-files", "beat", "flower", "health", "demo")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def _command(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def test_the_stack_has_every_service(compose):
    services = compose["services"]
    assert set(services) >= {"postgres", "redis", "s3", "secrets-init", "service-login", *APP_SERVICES}
    assert services["postgres"]["image"] == "postgres:15"
    assert services["redis"]["image"].startswith("redis:7")
    assert services["s3"]["image"].startswith("motoserver/moto")


def test_commands_are_the_documented_interfaces(compose):
    services = compose["services"]
    assert _command(services["worker"])[:4] == ["celery", "-A", "worker.app", "worker"]
    assert _command(services["worker-files"])[:4] == ["celery", "-A", "worker.app", "worker"]
    # One worker per queue (worker/app.py's routes): merges (and planning) apart from landing/staging.
    from worker.app import FILES_QUEUE, MERGES_QUEUE, TASK_ROUTES

    merges, files = _command(services["worker"]), _command(services["worker-files"])
    assert merges[merges.index("-Q") + 1] == MERGES_QUEUE and files[files.index("-Q") + 1] == FILES_QUEUE
    assert {r["queue"] for r in TASK_ROUTES.values()} == {FILES_QUEUE, MERGES_QUEUE}
    assert _command(services["beat"])[:4] == ["celery", "-A", "worker.app", "beat"]
    assert _command(services["flower"])[:4] == ["celery", "-A", "worker.app", "flower"]
    assert "127.0.0.1:5555:5555" in services["flower"]["ports"]
    assert _command(services["migrate"]) == ["indici-ingest", "migrate"]
    health = _command(services["health"])
    assert health[:2] == ["indici-ingest", "serve-health"] and "8080" in health
    assert "127.0.0.1:8080:8080" in services["health"]["ports"]


def test_workers_start_after_the_migration_and_their_login(compose):
    services = compose["services"]
    assert services["service-login"]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    for name in ("worker", "worker-files", "beat", "health"):
        assert services[name]["depends_on"]["service-login"] == {"condition": "service_completed_successfully"}


def _provided(environment: dict) -> set[str]:
    """Settings a service is given, directly or as <NAME>_FILE."""
    return {name.removesuffix("_FILE") for name in environment}


def test_app_services_get_what_they_need_and_nothing_settings_do_not_read(compose):
    aliases = {field.validation_alias for field in Settings.model_fields.values()}
    services = compose["services"]
    for name in APP_SERVICES + ("service-login",):
        environment = services[name]["environment"]
        assert _provided(environment) <= aliases | {"AWS_SESSION_TOKEN"}, f"{name}: a variable Settings does not read"
    worker = _provided(services["worker"]["environment"])
    assert PRODUCT_VARIABLES <= worker
    assert "MIGRATION_DATABASE_URL" in _provided(services["migrate"]["environment"])


# -- security settings (issue 10) ---------------------------------------------------------------------
SECRET_SETTINGS = {field.validation_alias for field in Settings.model_fields.values()
                   if "SecretStr" in str(field.annotation)} - {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_every_port_is_published_on_loopback_only(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_no_secret_is_written_in_the_compose_file(compose):
    """Secret settings arrive as files from the secret volumes, never as values (or defaults) here."""
    text = (REPO_ROOT / "docker-compose.yml").read_text()
    assert "local-stack-only-not-a-secret" not in text and "indici:indici" not in text
    for name, service in compose["services"].items():
        environment = service.get("environment") or {}
        for variable, value in environment.items():
            if variable in SECRET_SETTINGS and name != "secrets-init":
                pytest.fail(f"{name}: {variable} is given as a value; use {variable}_FILE")
            if variable.endswith("_FILE"):
                assert str(value).startswith("/secrets/"), (name, variable)
            assert "PASSWORD=" not in str(value) and "POSTGRES_PASSWORD" != variable, (name, variable)
    # The one place a key may come in is the first start's optional NHI_HMAC_KEY, without a default.
    assert compose["services"]["secrets-init"]["environment"]["NHI_HMAC_KEY"] == "${NHI_HMAC_KEY:-}"


def _volumes(service: dict) -> set[str]:
    return {str(v).split(":", 1)[0] for v in service.get("volumes", [])}


def test_each_service_mounts_only_the_secrets_it_needs(compose):
    services = compose["services"]
    expected = {
        "postgres": {"secrets-db"}, "redis": {"secrets-redis"}, "migrate": {"secrets-admin"},
        "service-login": {"secrets-admin"}, "worker": {"secrets-service", "secrets-nhi"},
        "worker-files": {"secrets-service"},  # lands and stages: never hashes an NHI, so no key
        "beat": {"secrets-service"}, "health": {"secrets-service"}, "flower": {"secrets-flower"},
    }
    for name, wanted in expected.items():
        assert {v for v in _volumes(services[name]) if v.startswith("secrets-")} == wanted, name
    for name, service in services.items():
        for volume in service.get("volumes", []):
            if str(volume).startswith("secrets-") and name != "secrets-init":
                assert str(volume).endswith(":ro"), f"{name} mounts {volume} writable"
    assert _command(services["secrets-init"]) == ["python", "ops/compose_secrets.py", "/secrets"]


def test_services_run_as_least_privileged_logins(compose):
    services = compose["services"]
    # The service connects with the etl_writer login; migrations with the owner login.
    for name in ("worker", "worker-files", "beat", "health"):
        assert services[name]["environment"]["DATABASE_URL_FILE"] == "/secrets/service/database_url"
        assert "MIGRATION_DATABASE_URL_FILE" not in services[name]["environment"]
    login = _command(services["service-login"])
    assert login[:3] == ["indici-ingest", "grant-login", "indici_service"]
    assert login[login.index("--role") + 1] == "etl_writer" and "--password-file" in login
    postgres = services["postgres"]["environment"]
    assert "POSTGRES_PASSWORD" not in postgres and postgres["POSTGRES_PASSWORD_FILE"].startswith("/secrets/db/")
    init = (REPO_ROOT / "ops" / "postgres-init" / "10-migrator.sh").read_text()
    assert "CREATE ROLE indici_migrator LOGIN CREATEROLE" in init and "SUPERUSER" not in init


def test_redis_requires_a_password_and_flower_basic_auth(compose):
    services = compose["services"]
    assert _command(services["redis"]) == ["redis-server", "/secrets/redis/redis.conf"]
    assert "REDISCLI_AUTH" in " ".join(services["redis"]["healthcheck"]["test"])
    flower = services["flower"]
    assert "--conf=ops/flowerconfig.py" in _command(flower)
    assert flower["environment"]["FLOWER_BASIC_AUTH_FILE"] == "/secrets/flower/flower_basic_auth"
    assert "NHI_HMAC_KEY_FILE" not in flower["environment"]


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


def test_notify_urls_reach_the_services_that_close_runs_as_a_secret_file(compose):
    services = compose["services"]
    for name in ("worker", "beat", "health", "demo"):
        assert services[name]["environment"]["NOTIFY_URLS_FILE"] == "/secrets/service/notify_urls", name
        assert "secrets-service" in _volumes(services[name]), name
    assert services["secrets-init"]["environment"]["NOTIFY_URLS"] == "${NOTIFY_URLS:-}"


def test_notify_urls_follow_the_operator_on_every_start(tmp_path):
    secrets = _load_ops("compose_secrets")
    secrets.generate(tmp_path, chown=False)
    assert _secret(tmp_path, "service/notify_urls") == ""
    assert secrets.generate(tmp_path, chown=False, notify_urls="json://hooks.example/t0ken") == ["service/notify_urls"]
    assert secrets.generate(tmp_path, chown=False) == []  # not given: the file is kept as it is
    assert _secret(tmp_path, "service/notify_urls") == "json://hooks.example/t0ken"
# -- the secrets of the first start (ops/compose_secrets.py) and Flower's auth (ops/flowerconfig.py) -------
def _load_ops(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "ops" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _secret(root, path: str) -> str:
    return (root / path).read_text()


def test_secrets_are_generated_once_and_agree_with_each_other(tmp_path):
    secrets = _load_ops("compose_secrets")
    first = secrets.generate(tmp_path, chown=False)
    assert "nhi/nhi_hmac_key" in first and "service/database_url" in first
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert secrets.generate(tmp_path, chown=False) == []  # a restart changes nothing
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    for path in before:
        assert path.stat().st_mode & 0o777 == 0o400, path
    assert len(_secret(tmp_path, "nhi/nhi_hmac_key").encode()) >= 32
    redis_password = _secret(tmp_path, "redis/redis_password")
    assert f"requirepass {redis_password}\n" in _secret(tmp_path, "redis/redis.conf")
    assert _secret(tmp_path, "service/celery_broker_url") == f"redis://:{redis_password}@redis:6379/0"
    assert _secret(tmp_path, "service/database_url") == \
        f"postgresql://indici_service:{_secret(tmp_path, 'admin/service_password')}@postgres:5432/indici"
    assert _secret(tmp_path, "admin/migration_database_url") == \
        f"postgresql://indici_migrator:{_secret(tmp_path, 'db/migrator_password')}@postgres:5432/indici"
    assert _secret(tmp_path, "flower/flower_basic_auth") == f"indici:{_secret(tmp_path, 'flower/flower_password')}"


def test_a_supplied_key_is_used_once_and_never_silently_replaced(tmp_path):
    secrets = _load_ops("compose_secrets")
    key = "my-own-nhi-hmac-key-of-at-least-32-bytes"
    secrets.generate(tmp_path, key, chown=False)
    assert _secret(tmp_path, "nhi/nhi_hmac_key") == key
    secrets.generate(tmp_path, key, chown=False)
    with pytest.raises(SystemExit, match="rekey"):
        secrets.generate(tmp_path, "another-nhi-hmac-key-of-at-least-32-bytes", chown=False)
    with pytest.raises(SystemExit, match="32 bytes"):
        secrets.generate(tmp_path / "fresh", "short", chown=False)


def test_every_secret_file_a_service_reads_exists_in_a_volume_it_mounts(compose, tmp_path, monkeypatch):
    _load_ops("compose_secrets").generate(tmp_path, chown=False)
    for name, service in compose["services"].items():
        environment = service.get("environment") or {}
        mounted = {str(v).split(":")[1] for v in service.get("volumes", []) if str(v).startswith("secrets-")}
        for variable, path in environment.items():
            if not variable.endswith("_FILE"):
                continue
            assert str(Path(path).parent) in mounted, f"{name}: {path} is not in a mounted volume"
            assert (tmp_path / Path(path).relative_to("/secrets")).is_file(), f"{name}: {path} is never written"
            monkeypatch.setenv(variable, str(tmp_path / Path(path).relative_to("/secrets")))
            monkeypatch.delenv(variable.removesuffix("_FILE"), raising=False)  # e.g. a test session's own
        Settings()  # every value read that way passes validation
        for variable in environment:
            monkeypatch.delenv(variable, raising=False)


def test_flower_refuses_to_start_without_basic_auth(monkeypatch):
    import runpy

    from worker.settings import get_settings

    config = REPO_ROOT / "ops" / "flowerconfig.py"
    monkeypatch.delenv("FLOWER_BASIC_AUTH", raising=False)
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit, match="FLOWER_BASIC_AUTH"):
            runpy.run_path(str(config))
        monkeypatch.setenv("FLOWER_BASIC_AUTH", "ops:first-password,admin:second-password")
        get_settings.cache_clear()
        options = runpy.run_path(str(config))
        assert options["basic_auth"] == ["ops:first-password", "admin:second-password"]
        assert options["address"] == "127.0.0.1"
    finally:
        get_settings.cache_clear()
