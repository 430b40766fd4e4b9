"""Turning a path or URL into an fsspec filesystem."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import UsageError


def filesystem(url: str, storage_options: Mapping[str, Any] | None = None):
    """The fsspec filesystem and path of ``url``; a missing backend gives its install hint."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    except ImportError as exc:  # fsspec's message names the package to install
        raise UsageError(f"{url}: {exc}") from exc
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{url}: cannot open this URL ({exc}); check the protocol and --storage-option") from exc
