"""IBM COS or any S3-compatible endpoint (``cos://`` and ``s3://``), through ibm-cos-sdk."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from audioset_batch.errors import (
    AccessDeniedError,
    ConfigError,
    ObjectNotFoundError,
    StorageError,
    TransientStorageError,
)
from audioset_batch.storage.object_store import MULTIPART_THRESHOLD, ObjectInfo

if TYPE_CHECKING:
    from audioset_batch.settings import Settings

#: Requests the SDK makes for one call before a transient failure reaches the caller (who retries the file later).
REQUEST_ATTEMPTS = 3

_TRANSIENT_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
    "500",
    "502",
    "503",
    "504",
}
_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_DENIED_CODES = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"}


def sdk_errors() -> tuple[type[BaseException], ...]:
    """The exceptions the SDK raises for failed requests. Anything else (a time-limit signal,
    a bug) passes through untranslated."""
    from ibm_botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError, OSError)


def translate_error(exc: BaseException, what: str) -> StorageError:
    """Map an SDK exception onto transient / not-found / denied / other."""
    from ibm_botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = f"{what}: {code or status} {error.get('Message', '')}".strip()
        if code in _NOT_FOUND_CODES or status == 404:
            return ObjectNotFoundError(message)
        if code in _DENIED_CODES or status in {401, 403}:
            return AccessDeniedError(message)
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return TransientStorageError(message)
        return StorageError(message)
    from ibm_botocore.exceptions import NoCredentialsError, PartialCredentialsError

    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return AccessDeniedError(
            f"{what}: no COS credentials; set AUDIOSET_COS_ACCESS_KEY_ID and AUDIOSET_COS_SECRET_ACCESS_KEY "
            "(or AUDIOSET_COS_API_KEY with AUDIOSET_COS_INSTANCE_ID)"
        )
    if isinstance(exc, BotoCoreError | OSError):
        return TransientStorageError(f"{what}: {type(exc).__name__}: {exc}")
    return StorageError(f"{what}: {type(exc).__name__}: {exc}")


class CosStore:
    """IBM COS or any S3-compatible endpoint, through ``ibm-cos-sdk``."""

    def __init__(self, settings: Settings) -> None:
        import ibm_boto3
        from ibm_boto3.s3.transfer import TransferConfig
        from ibm_botocore.client import Config

        if not settings.cos_endpoint:  # the SDK would fall back to AWS: no network beyond what is configured
            raise ConfigError(
                "cos:// and s3:// URLs need AUDIOSET_COS_ENDPOINT, e.g. "
                "https://s3.us-south.cloud-object-storage.appdomain.cloud (IBM COS) or http://minio:9000 (MinIO)"
            )
        kwargs: dict[str, Any] = {"endpoint_url": settings.cos_endpoint}
        # total_max_attempts counts the first try; the SDK's max_attempts counts retries only (3 meant 4 requests)
        retries = {"total_max_attempts": REQUEST_ATTEMPTS, "mode": "standard"}
        if settings.cos_api_key is not None:
            kwargs.update(
                ibm_api_key_id=settings.cos_api_key.get_secret_value(),
                ibm_service_instance_id=settings.cos_instance_id,
            )
            if settings.cos_auth_endpoint:
                kwargs["ibm_auth_endpoint"] = settings.cos_auth_endpoint
            config = Config(signature_version="oauth", retries=retries, connect_timeout=10, read_timeout=60)
        else:
            if settings.cos_access_key_id is not None and settings.cos_secret_access_key is not None:
                kwargs.update(
                    aws_access_key_id=settings.cos_access_key_id.get_secret_value(),
                    aws_secret_access_key=settings.cos_secret_access_key.get_secret_value(),
                )
            config = Config(
                signature_version="s3v4",
                retries=retries,
                connect_timeout=10,
                read_timeout=60,
                s3={"addressing_style": "path"},
            )
            kwargs["region_name"] = settings.cos_region
        self.client = ibm_boto3.client("s3", config=config, **kwargs)
        self.transfer = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD, max_concurrency=4
        )

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except sdk_errors() as exc:
            raise translate_error(exc, what) from exc

    def stat(self, bucket: str, key: str) -> ObjectInfo:
        head = self._call(f"cos://{bucket}/{key}", self.client.head_object, Bucket=bucket, Key=key)
        return ObjectInfo(key=key, size=int(head["ContentLength"]), etag=str(head["ETag"]).strip('"'))

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": 1000})
        iterator = iter(pages)
        while True:
            page = self._call(f"cos://{bucket}/{prefix}", next, iterator, None)
            if page is None:
                return
            for item in page.get("Contents", []):
                yield ObjectInfo(key=item["Key"], size=int(item["Size"]), etag=str(item["ETag"]).strip('"'))

    def download(self, bucket: str, key: str, fileobj: IO[bytes]) -> ObjectInfo:
        what = f"cos://{bucket}/{key}"
        response = self._call(what, self.client.get_object, Bucket=bucket, Key=key)
        body = response["Body"]
        try:
            for block in body.iter_chunks(1 << 20):
                fileobj.write(block)
        except sdk_errors() as exc:
            raise translate_error(exc, what) from exc
        finally:
            body.close()
        return ObjectInfo(key=key, size=int(response["ContentLength"]), etag=str(response["ETag"]).strip('"'))

    def upload_file(self, path: Path, bucket: str, key: str, content_type: str = "application/octet-stream") -> None:
        self._call(
            f"cos://{bucket}/{key}",
            self.client.upload_file,
            str(path),
            bucket,
            key,
            ExtraArgs={"ContentType": content_type},
            Config=self.transfer,
        )

    def put_bytes(self, data: bytes, bucket: str, key: str, content_type: str = "application/octet-stream") -> None:
        self._call(
            f"cos://{bucket}/{key}", self.client.put_object, Bucket=bucket, Key=key, Body=data, ContentType=content_type
        )

    def get_bytes(self, bucket: str, key: str, limit: int | None = None) -> bytes | None:
        ranged = {} if limit is None else {"Range": f"bytes=0-{max(limit, 1) - 1}"}
        try:
            response = self._call(f"cos://{bucket}/{key}", self.client.get_object, Bucket=bucket, Key=key, **ranged)
        except ObjectNotFoundError:
            return None
        data: bytes = response["Body"].read()
        return data

    def delete(self, bucket: str, key: str) -> None:
        self._call(f"cos://{bucket}/{key}", self.client.delete_object, Bucket=bucket, Key=key)
