"""Docker cannot run on CI machines; these checks keep the compose file and Dockerfile honest."""

from __future__ import annotations

import re
from typing import Any

import yaml

from audioset_batch.settings import Settings
from cli import main
from tests.conftest import ROOT

COMPOSE = ROOT / "docker" / "docker-compose.yml"


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def test_compose_parses_with_expected_services() -> None:
    services = compose()["services"]
    assert {"redis", "minio", "minio-setup", "worker", "listener", "dashboard", "flower"} <= set(services)
    assert "container_name" not in services["worker"], "container_name would break --scale worker=N"
    assert "ports" not in services["worker"], "published ports would break --scale worker=N"


def test_every_audioset_command_is_a_real_subcommand() -> None:
    for name, service in compose()["services"].items():
        if service.get("image", "").startswith("audioset-batch") and "entrypoint" not in service:
            command = service["command"]
            assert command[0] in main.commands, f"{name}: unknown subcommand {command[0]!r}"
            sub = main.commands[command[0]]
            options = {opt for param in sub.params for opt in getattr(param, "opts", [])}
            for word in command[1:]:
                if word.startswith("--"):
                    assert word in options, f"{name}: {command[0]} has no option {word}"


def test_every_env_var_exists_in_settings() -> None:
    known = {f"AUDIOSET_{field.upper()}" for field in Settings.model_fields}
    text = COMPOSE.read_text(encoding="utf-8")
    used = set(re.findall(r"\b(AUDIOSET_[A-Z_]+)\b", text))
    assert used and used <= known, used - known


def test_published_ports_do_not_clash() -> None:
    published: list[str] = []
    for service in compose()["services"].values():
        for mapping in service.get("ports", []):
            published.append(str(mapping).rsplit(":", 2)[-2])
    assert len(published) == len(set(published)), published


def test_every_published_port_binds_to_loopback_unless_the_operator_opts_out() -> None:
    mappings = [str(m) for service in compose()["services"].values() for m in service.get("ports", [])]
    assert mappings
    for mapping in mappings:
        assert mapping.startswith("${PUBLISH_ADDRESS:-127.0.0.1}:"), mapping


def test_control_plane_needs_credentials() -> None:
    services = compose()["services"]
    text = COMPOSE.read_text(encoding="utf-8")
    assert "--requirepass" in " ".join(services["redis"]["command"])
    assert "redis://:${REDIS_PASSWORD:?" in text  # clients authenticate
    assert "MINIO_NOTIFY_REDIS_PASSWORD_AUDIOSET" in services["minio"]["environment"]
    assert "--basic-auth" in " ".join(services["flower"]["command"])
    assert services["listener"]["environment"]["AUDIOSET_LISTEN_TOKEN"].startswith("${AUDIOSET_LISTEN_TOKEN:?")
    assert services["dashboard"]["environment"]["AUDIOSET_UI_TOKEN"].startswith("${AUDIOSET_UI_TOKEN:?")
    assert services["worker"]["environment"]["AUDIOSET_ALLOWED_SOURCES"] == "incoming"
    assert "change-me" not in text  # no default secret anywhere


def test_every_required_secret_is_in_the_env_example() -> None:
    required = set(re.findall(r"\$\{([A-Z_]+):\?", COMPOSE.read_text(encoding="utf-8")))
    example = (ROOT / "docker" / "env.example").read_text(encoding="utf-8")
    named = set(re.findall(r"^([A-Z_]+)=", example, re.MULTILINE))
    assert required and required <= named, required - named
    assert ".env" in (ROOT / ".gitignore").read_text(encoding="utf-8").split()


def test_dockerfile_runs_as_non_root_with_healthcheck() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^USER (?!root)\w+", text, re.MULTILINE)
    assert "HEALTHCHECK" in text
    copies = re.findall(r"^COPY (.+)$", text, re.MULTILINE)
    assert copies
    for line in copies:
        for source in line.split()[:-1]:
            assert (ROOT / source).exists(), source


def test_services_get_their_own_cos_keys_as_secret_files_not_the_root_login_in_their_environment() -> None:
    services = compose()["services"]
    text = COMPOSE.read_text(encoding="utf-8")
    for name in ("worker", "listener", "dashboard"):
        environment = services[name]["environment"]
        assert environment["AUDIOSET_SECRETS_DIR"] == "/run/secrets", name
        assert not {"AUDIOSET_COS_ACCESS_KEY_ID", "AUDIOSET_COS_SECRET_ACCESS_KEY"} & set(environment), name
        assert set(services[name]["secrets"]) == {"AUDIOSET_COS_ACCESS_KEY_ID", "AUDIOSET_COS_SECRET_ACCESS_KEY"}
    for name, service in services.items():  # the root login reaches MinIO and the setup job only
        if "MINIO_ROOT_PASSWORD" in str(service.get("environment", "")):
            assert name in {"minio", "minio-setup"}, name
    assert set(compose()["secrets"]) == {"AUDIOSET_COS_ACCESS_KEY_ID", "AUDIOSET_COS_SECRET_ACCESS_KEY"}
    assert "mc admin user add local" in text and "audioset-service" in text


def test_the_image_holds_every_package_the_project_installs() -> None:
    """The dashboard package was once left out of the image, so compose's dashboard service could not start."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {name.rstrip("*") for name in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text(encoding="utf-8")
    copied = {source for line in re.findall(r"^COPY (.+)$", dockerfile, re.M) for source in line.split()[:-1]}
    assert packages | {"celeryconfig.py", "pyproject.toml"} <= copied, packages - copied


def test_the_serving_only_requirements_are_the_project_s_without_tensorflow() -> None:
    import tomllib

    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    serving = [
        line.strip()
        for line in (ROOT / "docker" / "requirements-serving.txt").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert serving == [d for d in dependencies if not d.startswith(("tensorflow", "keras"))]
    assert any(d.startswith("ai-edge-litert") for d in serving)
