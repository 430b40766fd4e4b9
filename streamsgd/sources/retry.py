"""Retrying transient storage failures: a small policy, one call wrapper.

An object store drops connections, answers 5xx under load, or stalls past a timeout;
the same request a moment later usually succeeds. Such failures are retried with
exponential backoff a bounded number of times, then reported as one :class:`SourceError`
naming what was being read. Everything else (no such key, access denied, a corrupt
file) is permanent and raised at once: retrying cannot fix it.

The policy is configuration: a :class:`RetryPolicy` given to ``open_source(retry_policy=...)``
travels with the source (default: ``TRIES`` tries, ``DELAY`` seconds doubling between
them). Nothing here reads the environment; the CLI reads ``STREAMSGD_RETRIES`` and
``STREAMSGD_RETRY_DELAY`` once, at start-up (:mod:`streamsgd.run.runtime`).
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ..errors import SourceError, StreamSGDError

T = TypeVar("T")

#: Tries per read (the first one included) and the first backoff in seconds, doubling:
#: 0.2 + 0.4 + 0.8 + 1.6 = 3 s of waiting before a read is given up.
TRIES = 5
DELAY = 0.2
FACTOR = 2.0

# class names (anywhere in an exception's MRO) of the transient failures of botocore,
# aiohttp and urllib3, matched by name so that none of them has to be imported
_TRANSIENT_NAMES = frozenset({
    "EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError",
    "HTTPClientError", "ClientConnectionError", "ClientPayloadError", "ServerDisconnectedError",
    "ClientOSError", "IncompleteRead", "ProtocolError", "FSTimeoutError",
})
# errno values s3fs gives 5xx answers (InternalError -> EREMOTEIO, SlowDown/503 -> EBUSY)
# and the socket-level ones
_TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name) for name in
    ("EREMOTEIO", "EBUSY", "ECONNRESET", "ECONNREFUSED", "ECONNABORTED", "ETIMEDOUT", "EPIPE", "EAGAIN")
    if hasattr(errno, name)
)
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


@dataclass(frozen=True)
class RetryPolicy:
    """``tries`` attempts, sleeping ``delay * factor**k`` after the k-th failure."""

    tries: int = TRIES
    delay: float = DELAY
    factor: float = FACTOR

    @property
    def total_wait(self) -> float:
        """Seconds spent sleeping before giving up (not counting the attempts themselves)."""
        return sum(self.delay * self.factor**k for k in range(self.tries - 1))


#: The policy of a source opened without one.
DEFAULT_POLICY = RetryPolicy()


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a failure worth retrying."""
    if isinstance(exc, _PERMANENT) or isinstance(exc, StreamSGDError):
        return False
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _PERMANENT):
            return False
        if isinstance(current, (ConnectionError, TimeoutError)):
            return True
        if any(k.__name__ in _TRANSIENT_NAMES for k in type(current).__mro__):
            return True
        if isinstance(current, OSError) and current.errno in _TRANSIENT_ERRNOS:
            return True
        status = getattr(current, "response", None)
        if isinstance(status, dict):  # botocore ClientError: retry the server's 5xx answers
            code = status.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if int(code) >= 500:
                return True
        current = current.__cause__ or current.__context__
    return False


class Breaker:
    """Shared by the reads of one source: once one read has used up its tries, the store is
    taken as down and the other reads (queued behind it, or in flight) try once more only.

    Without it a window of three chunks read by one thread gave up after three full
    rounds of backoff (30 s) instead of one. A read that succeeds closes it again.
    """

    def __init__(self) -> None:
        self.down = False


def call(fn: Callable[[], T], what: str, retry: RetryPolicy | None = None, breaker: Breaker | None = None) -> T:
    """``fn()``, retried on transient failures under ``retry`` (default :data:`DEFAULT_POLICY`);
    ``what`` names the URL and the chunk.

    Raises
    ------
    SourceError
        When every try failed transiently: one line naming ``what``, the tries, and the
        last failure. Permanent failures propagate unchanged, after the first try.
    """
    retry = retry or DEFAULT_POLICY
    for attempt in range(retry.tries):
        try:
            result = fn()
            if breaker is not None:
                breaker.down = False
            return result
        except Exception as exc:
            if not is_transient(exc):
                problem = credential_problem(exc)
                if problem is not None:  # permanent, and the user can fix it: say how
                    raise credentials_error(what, problem) from exc
                raise
            if attempt == retry.tries - 1 or (breaker is not None and breaker.down):
                if breaker is not None:
                    breaker.down = True
                tries = f"{attempt + 1} {'try' if attempt == 0 else 'tries'}"
                raise SourceError(
                    f"{what}: the store failed after {tries} ({first_line(exc)}); check that it is reachable "
                    "(endpoint, network) and run again"
                ) from exc
            # backoff between tries, not synchronisation: the store gets time to recover
            time.sleep(retry.delay * retry.factor**attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


#: Class names (anywhere in an exception's chain) and S3 error codes that mean the store
#: refused or never got the caller's credentials: matched by name so botocore need not
#: be imported (it is not installed without s3fs).
_CREDENTIAL_NAMES = frozenset({"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                               "NoAuthTokenError", "UnauthorizedSSOTokenError"})
_CREDENTIAL_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                               "TokenRefreshRequired", "MissingSecurityHeader"})

#: How to give each store its credentials, for the one-line message.
CREDENTIAL_HINTS = {
    "s3": "pass them with --storage-option key=ACCESS_KEY --storage-option secret=SECRET_KEY (or the "
          "[storage-options] table of a job file), or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
          "AWS_PROFILE) in the environment; for a public bucket add --storage-option anon=true",
    "gs": "pass --storage-option token=PATH/TO/KEY.json, or set GOOGLE_APPLICATION_CREDENTIALS; for a public "
          "bucket add --storage-option token=anon",
    "az": "pass --storage-option account_name=… --storage-option account_key=…, or set "
          "AZURE_STORAGE_CONNECTION_STRING",
}


def credential_problem(exc: BaseException) -> str | None:
    """The name of the credentials failure in ``exc``'s chain (``NoCredentialsError``,
    ``InvalidAccessKeyId`` …), or None when it is some other failure."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for klass in type(current).__mro__:
            if klass.__name__ in _CREDENTIAL_NAMES:
                return klass.__name__
        response = getattr(current, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            if code in _CREDENTIAL_CODES:
                return code
        current = current.__cause__ or current.__context__
    return None


def credentials_error(url: str, problem: str) -> SourceError:
    """One line naming the missing or refused credentials of ``url``'s store and how to pass
    them. It never quotes the store's answer or the options: they may hold the secret."""
    head, sep, _ = url.partition("://")
    proto = head.split("::")[-1] if sep else "file"
    store = {"s3a": "s3", "gcs": "gs", "abfs": "az", "abfss": "az", "adl": "az"}.get(proto, proto)
    hint = CREDENTIAL_HINTS.get(store, "pass them with --storage-option KEY=VALUE as the store's fsspec "
                                       "backend documents")
    what = "no credentials were found" if problem.startswith("No") else f"the store refused the credentials ({problem})"
    return SourceError(f"{url}: {what}; {hint}")
