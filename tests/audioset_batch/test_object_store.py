from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from audioset_batch.errors import (
    AccessDeniedError,
    InvalidObjectKeyError,
    ObjectNotFoundError,
    StorageError,
    TransientStorageError,
)
from audioset_batch.settings import load_settings
from audioset_batch.storage.cos_store import REQUEST_ATTEMPTS, CosStore, translate_error
from audioset_batch.storage.local_store import LocalStore
from audioset_batch.storage.object_store import ObjectURL, decode_key
from tests.conftest import cos_env
from tests.faults.proxy import FaultProxy


def test_url_parsing() -> None:
    assert ObjectURL.parse("cos://b/k/x.h5") == ObjectURL("cos", "b", "k/x.h5")
    assert ObjectURL.parse("S3://b/") == ObjectURL("s3", "b", "")
    assert str(ObjectURL.parse("file://b/k.h5")) == "file://b/k.h5"
    with pytest.raises(InvalidObjectKeyError, match="unsupported scheme"):
        ObjectURL.parse("http://b/k")
    with pytest.raises(InvalidObjectKeyError, match="no scheme"):
        ObjectURL.parse("k.h5")


def test_decode_key() -> None:
    assert decode_key("a+b/%C3%A9t%C3%A9+%2B1.h5") == "a b/été +1.h5"


@pytest.fixture
def cos_store(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> CosStore:
    for name, value in cos_env(s3_endpoint).items():
        monkeypatch.setenv(name, value)
    store = CosStore(load_settings())
    store.client.create_bucket(Bucket="unit")
    return store


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    (tmp_path / "unit").mkdir()
    return LocalStore(tmp_path)


@pytest.fixture(params=["local", "cos"])
def store(request: pytest.FixtureRequest) -> LocalStore | CosStore:
    return request.getfixturevalue(f"{request.param}_store")  # type: ignore[no-any-return]


def test_roundtrip_list_and_delete(store: LocalStore | CosStore, tmp_path: Path) -> None:
    store.put_bytes(b"hello", "unit", "a/one.h5")
    src = tmp_path / "two.bin"
    src.write_bytes(b"x" * 3000)
    store.upload_file(src, "unit", "a/b/two.h5")
    store.put_bytes(b"z", "unit", "other/three.h5")
    assert [o.key for o in store.list("unit", "a/")] == ["a/b/two.h5", "a/one.h5"]
    info = store.stat("unit", "a/b/two.h5")
    assert info.size == 3000 and info.etag
    buffer = io.BytesIO()
    assert store.download("unit", "a/b/two.h5", buffer).size == 3000
    assert buffer.getvalue() == b"x" * 3000
    assert store.get_bytes("unit", "a/one.h5") == b"hello"
    assert store.get_bytes("unit", "missing") is None
    store.delete("unit", "a/one.h5")
    assert store.get_bytes("unit", "a/one.h5") is None
    with pytest.raises(ObjectNotFoundError):
        store.stat("unit", "a/one.h5")


def test_etag_changes_on_overwrite(store: LocalStore | CosStore) -> None:
    store.put_bytes(b"first", "unit", "k.h5")
    before = store.stat("unit", "k.h5").etag
    store.put_bytes(b"second version", "unit", "k.h5")
    assert store.stat("unit", "k.h5").etag != before


def test_missing_bucket(store: LocalStore | CosStore) -> None:
    with pytest.raises(ObjectNotFoundError):
        list(store.list("no-such-bucket"))


def test_cos_listing_paginates(cos_store: CosStore) -> None:
    for i in range(1005):
        cos_store.client.put_object(Bucket="unit", Key=f"many/{i:05d}.h5", Body=b"")
    keys = [o.key for o in cos_store.list("unit", "many/")]
    assert len(keys) == 1005 and keys[0] == "many/00000.h5" and keys[-1] == "many/01004.h5"


def test_cos_unreachable_endpoint_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import free_port

    for name, value in cos_env(f"http://127.0.0.1:{free_port()}").items():
        monkeypatch.setenv(name, value)
    store = CosStore(load_settings())
    with pytest.raises(TransientStorageError):
        store.stat("b", "k")


def test_cos_tries_each_request_three_times_in_all(proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """REQUEST_ATTEMPTS counts the first try: the SDK's own ``max_attempts`` counts retries only (3 made 4)."""
    for name, value in {**cos_env(proxy.target), "AUDIOSET_COS_ENDPOINT": proxy.url}.items():
        monkeypatch.setenv(name, value)
    store = CosStore(load_settings())
    store.client.create_bucket(Bucket="tries")
    store.put_bytes(b"x", "tries", "a.h5")
    proxy.fail_next(REQUEST_ATTEMPTS - 1)  # all but the last try fail: the call succeeds
    assert store.stat("tries", "a.h5").size == 1
    assert proxy.injected == REQUEST_ATTEMPTS - 1
    proxy.fail_next(REQUEST_ATTEMPTS + 1)  # one more than the SDK makes: the caller hears of it
    with pytest.raises(TransientStorageError):
        store.stat("tries", "a.h5")
    assert proxy.injected == 2 * REQUEST_ATTEMPTS - 1  # the last failure was never asked for


def test_error_translation() -> None:
    from ibm_botocore.exceptions import ClientError

    def err(code: str, status: int) -> ClientError:
        return ClientError(
            {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
        )

    assert isinstance(translate_error(err("SlowDown", 503), "x"), TransientStorageError)
    assert isinstance(translate_error(err("InternalError", 500), "x"), TransientStorageError)
    assert isinstance(translate_error(err("NoSuchKey", 404), "x"), ObjectNotFoundError)
    assert isinstance(translate_error(err("AccessDenied", 403), "x"), AccessDeniedError)
    other = translate_error(err("InvalidArgument", 400), "x")
    assert type(other) is StorageError and not other.transient


@pytest.mark.parametrize("key", ["../x.h5", "a/../../x.h5", "/etc/passwd", "a/./b.h5"])
def test_local_store_refuses_escaping_keys(local_store: LocalStore, key: str) -> None:
    with pytest.raises(InvalidObjectKeyError):
        local_store.stat("unit", key)


def test_local_store_refuses_symlink_out_of_bucket(local_store: LocalStore, tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    os.symlink(outside, local_store.root / "unit" / "link.h5")
    with pytest.raises(InvalidObjectKeyError, match="outside bucket"):
        local_store.get_bytes("unit", "link.h5")
    assert [o.key for o in local_store.list("unit")] == []


def test_local_store_writes_are_atomic(local_store: LocalStore) -> None:
    def failing(_fh: object) -> None:
        raise RuntimeError("disk on fire")

    local_store.put_bytes(b"old", "unit", "r.jsonl")
    with pytest.raises(RuntimeError):
        local_store._write("unit", "r.jsonl", failing)
    assert local_store.get_bytes("unit", "r.jsonl") == b"old"
    assert sorted(p.name for p in (local_store.root / "unit").iterdir()) == ["r.jsonl"]
