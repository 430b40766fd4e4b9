"""Shared fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def logistic_file(tmp_path_factory):
    """20,000 rows, 8 features, 20 row groups, from the generator (known true weights)."""
    from streamsgd.tools.generate import generate

    path = tmp_path_factory.mktemp("data") / "logistic.parquet"
    generate(str(path), rows=20000, features=8, task="logistic", seed=3, row_group_rows=1000)
    return str(path)


@pytest.fixture(scope="session")
def s3_server():
    """moto_server for the whole session, with a bucket ``data``; stopped at the end."""
    from s3server import S3Server

    server = S3Server()
    server.start()
    try:
        server.filesystem().mkdir("data")
        yield server
    finally:
        server.stop()
