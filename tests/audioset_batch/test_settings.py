from __future__ import annotations

from pathlib import Path

import pytest

from audioset_batch.errors import ConfigError
from audioset_batch.settings import Settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("AUDIOSET_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = load_settings()
    assert s.top_k == 5 and s.results_prefix == "predictions/" and s.full_scores is False
    assert s.effective_visibility_timeout > s.time_limit > s.soft_time_limit


def test_env_vars_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIOSET_TOP_K", "7")
    monkeypatch.setenv("AUDIOSET_FULL_SCORES", "true")
    monkeypatch.setenv("AUDIOSET_RESULTS_PREFIX", "out")
    s = load_settings()
    assert (s.top_k, s.full_scores, s.results_prefix) == (7, True, "out/")


def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIOSET_TOP_K", "0")
    with pytest.raises(ConfigError, match="AUDIOSET_TOP_K"):
        load_settings()


def test_non_numeric_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIOSET_BATCH_SIZE", "lots")
    with pytest.raises(ConfigError, match="AUDIOSET_BATCH_SIZE"):
        load_settings()


def test_hmac_keys_go_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIOSET_COS_ACCESS_KEY_ID", "abc")
    with pytest.raises(ConfigError, match="AUDIOSET_COS_SECRET_ACCESS_KEY"):
        load_settings()


def test_api_key_needs_instance_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIOSET_COS_API_KEY", "apikey-value")
    with pytest.raises(ConfigError, match="AUDIOSET_COS_INSTANCE_ID"):
        load_settings()


def test_time_limits_are_ordered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIOSET_SOFT_TIME_LIMIT", "100")
    monkeypatch.setenv("AUDIOSET_TIME_LIMIT", "50")
    with pytest.raises(ConfigError, match="AUDIOSET_TIME_LIMIT"):
        load_settings()


def test_unknown_broker_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIOSET_BROKER_URL", "kafka://x")
    with pytest.raises(ConfigError, match="AUDIOSET_BROKER_URL"):
        load_settings()


def test_results_prefix_cannot_climb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIOSET_RESULTS_PREFIX", "../elsewhere/")
    with pytest.raises(ConfigError, match="AUDIOSET_RESULTS_PREFIX"):
        load_settings()


def test_secrets_are_not_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIOSET_COS_ACCESS_KEY_ID", "AKIDVALUE")
    monkeypatch.setenv("AUDIOSET_COS_SECRET_ACCESS_KEY", "supersecretvalue")
    s = load_settings()
    assert "supersecretvalue" not in repr(s) and "supersecretvalue" not in str(s.model_dump())


def test_state_url_defaults() -> None:
    assert load_settings(broker_url="redis://h:6379/0").effective_state_url == "redis://h:6379/0"
    assert load_settings(broker_url="filesystem://").effective_state_url.startswith("sqlite:///")


def test_celery_config_is_json_only_and_acks_late() -> None:
    from worker.config import celery_config

    s = load_settings(soft_time_limit=100, time_limit=200)
    conf = celery_config(s)
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert (
        conf["broker_transport_options"]["visibility_timeout"] > conf["task_time_limit"] > conf["task_soft_time_limit"]
    )


def test_embedded_broker_keeps_all_its_files_under_the_local_root(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from worker.config import transport_options

    options = transport_options(load_settings(broker_url="filesystem://", local_root=tmp_path))
    for key in ("control_folder", "data_folder_in", "data_folder_out", "processed_folder"):
        assert str(options[key]).startswith(str(tmp_path.resolve())), key


def test_secrets_come_from_files_in_the_secrets_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "audioset_cos_access_key_id").write_text("key-id")
    (tmp_path / "audioset_cos_secret_access_key").write_text("from-a-file")
    for name in ("AUDIOSET_COS_ACCESS_KEY_ID", "AUDIOSET_COS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AUDIOSET_SECRETS_DIR", str(tmp_path))
    settings = load_settings()
    assert settings.cos_secret_access_key is not None
    assert settings.cos_secret_access_key.get_secret_value() == "from-a-file"
    monkeypatch.setenv("AUDIOSET_SECRETS_DIR", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"AUDIOSET_SECRETS_DIR: .* is not a folder"):
        load_settings()


def test_every_secret_setting_is_masked_in_log_lines_including_ones_added_later() -> None:
    import logging

    from pydantic import SecretStr

    from audioset_batch.logs import RedactingFilter, secrets_of

    secret_fields = [name for name, field in Settings.model_fields.items() if "SecretStr" in str(field.annotation)]
    assert {"listen_token", "ui_token", "cos_secret_access_key"} <= set(secret_fields)
    values = {name: f"secret-{name}-value" for name in secret_fields}
    settings = load_settings(**values, cos_instance_id="instance")  # an API key needs its instance id
    assert all(isinstance(getattr(settings, name), SecretStr) for name in values)
    line = " ".join(values.values())
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "oops %s", (line,), None)
    RedactingFilter(secrets_of(settings)).filter(record)
    assert not any(value in record.getMessage() for value in values.values()), record.getMessage()
