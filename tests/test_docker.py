"""Docker cannot run on CI machines; these checks keep the compose file and Dockerfile honest."""

from __future__ import annotations

import re
from typing import Any

import yaml

from audioset_batch.cli import main
from audioset_batch.settings import Settings
from tests.conftest import ROOT

COMPOSE = ROOT / "docker" / "docker-compose.yml"


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def test_compose_parses_with_expected_services() -> None:
    services = compose()["services"]
    assert {"redis", "minio", "minio-setup", "worker", "listener", "flower"} <= set(services)
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
            published.append(str(mapping).split(":")[0])
    assert len(published) == len(set(published)), published


def test_dockerfile_runs_as_non_root_with_healthcheck() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^USER (?!root)\w+", text, re.MULTILINE)
    assert "HEALTHCHECK" in text
    copies = re.findall(r"^COPY (.+)$", text, re.MULTILINE)
    assert copies
    for line in copies:
        for source in line.split()[:-1]:
            assert (ROOT / source).exists(), source
