"""Turning a path or URL into an fsspec filesystem, with bounded retries on object stores."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import SourceError, UsageError

#: botocore settings s3fs gets unless the user sets their own ``config_kwargs``: no
#: retries of botocore's own (the loop in ``retry.py`` does the backing off, once) and
#: timeouts short enough that a dead or stalled endpoint fails in seconds. botocore's
#: defaults (legacy mode: 5 attempts with backoff) would multiply with our own tries and
#: make one refused connection take most of a minute to report.
S3_CONFIG = {"retries": {"max_attempts": 1, "mode": "standard"}, "connect_timeout": 3, "read_timeout": 10}


def protocol_of(url: str) -> str:
    """The URL's protocol: ``file`` for plain paths."""
    head, sep, _ = url.partition("://")
    return head.split("::")[-1] if sep else "file"


def with_defaults(url: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``storage_options`` plus our defaults for the URL's backend (user settings win)."""
    options = dict(storage_options or {})
    if protocol_of(url) in ("s3", "s3a"):
        config = dict(options.get("config_kwargs") or {})
        for key, value in S3_CONFIG.items():
            config.setdefault(key, value)
        options["config_kwargs"] = config
    return options


def filesystem(url: str, storage_options: Mapping[str, Any] | None = None):
    """The fsspec filesystem and path of ``url``; a missing backend gives its install hint."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url, **with_defaults(url, storage_options))
    except ImportError as exc:  # fsspec's message names the package to install
        raise UsageError(f"{url}: {exc}") from exc
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{url}: cannot open this URL ({exc}); check the protocol and --storage-option") from exc


def store_name(fs) -> str:
    """The filesystem's protocol as one word (``file``, ``s3``, ``memory`` …)."""
    proto = fs.protocol
    name = proto[0] if isinstance(proto, (tuple, list)) else proto
    return "file" if name in ("file", "local") else str(name)


def file_info(fs, path: str) -> dict[str, Any]:
    """Size and version marks (ETag or mtime) of one file, as plain JSON values."""
    info = fs.info(path)
    out: dict[str, Any] = {"size": int(info.get("size") or 0)}
    etag = info.get("ETag") or info.get("etag")
    if etag:
        out["etag"] = str(etag).strip('"')
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("created")
    if mtime is not None:
        out["mtime"] = mtime.isoformat() if hasattr(mtime, "isoformat") else float(mtime)
    return out


def storage_failure(url: str, exc: BaseException) -> SourceError:
    """``exc``, raised while reading or writing ``url``, as one :class:`SourceError` line."""
    from .retry import credential_problem, credentials_error, first_line

    problem = credential_problem(exc)
    if problem is not None:
        return credentials_error(url, problem)
    if isinstance(exc, SourceError):
        return exc
    return SourceError(f"{url}: {first_line(exc)}; check the URL, its permissions and --storage-option")


#: Object stores whose first path segment is a bucket (or container) that must exist.
BUCKET_STORES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")


def check_bucket(url: str, option: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Check that the bucket an output URL goes to answers, with these credentials: before
    hours of training, not at the final upload. Other stores are not checked."""
    if protocol_of(url) not in BUCKET_STORES:
        return  # stores without buckets (memory://, sftp:// …) fail, if they do, at the write
    fs, path = filesystem(url, storage_options)
    bucket = path.split("/", 1)[0]
    try:
        fs.info(bucket)  # not exists(): it answers False for missing credentials too
    except FileNotFoundError:
        raise SourceError(f"{option} {url}: the bucket {bucket!r} does not exist or is not visible with these "
                          "credentials; create it or fix the URL") from None
    except Exception as exc:  # no credentials, endpoint down: the same one line as a read
        raise storage_failure(url, exc) from exc
