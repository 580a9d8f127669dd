"""How kvclient's generated stub types the blocking API (checked by mypy --strict; never run).

tests/test_stubgen.py runs mypy on this file with examples/dual_api on the
path.  Each line marked ``# error: CODE`` must be reported by mypy with that
error code, and nothing else may be.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import AsyncIterator, Generator
from contextlib import AbstractContextManager

import kvclient
import kvclient._impl
from typing_extensions import assert_type


def sync_api() -> None:
    client = kvclient.connect(name="docs")
    assert_type(client, kvclient.Client)
    assert_type(client.ping(), float)
    assert_type(client.closed, bool)
    assert_type(client.server_name, str)
    with kvclient.Client(kvclient.Server(), name="x") as entered:
        assert_type(entered, kvclient.Client)
    bucket = client.bucket("users", kvclient.TEXT)
    assert_type(bucket, kvclient.Bucket[str])
    assert_type(bucket.get("ada"), str | None)
    bucket.put("ada", "Ada Lovelace")
    assert_type(bucket.items(), list[tuple[str, str]])
    for key in bucket:
        assert_type(key, str)
    assert_type(client.keys("users"), Generator[str])
    assert_type(client.transaction(), AbstractContextManager[kvclient.Transaction])
    with client.transaction() as txn:
        assert_type(txn, kvclient.Transaction)
        txn.put("users", "bob", b"Bob")
    assert_type(kvclient.copy_bucket(bucket, client.bucket("copy", kvclient.TEXT)), int)
    client.close()


def futures(client: kvclient.Client) -> None:
    assert_type(client.ping.submit(), concurrent.futures.Future[float])
    assert_type(kvclient.connect.submit(), concurrent.futures.Future[kvclient.Client])
    assert_type(
        client.bucket("b", kvclient.RAW).get.submit("k"), concurrent.futures.Future[bytes | None]
    )


async def async_api(client: kvclient.Client) -> None:
    assert_type(await client.ping.aio(), float)
    assert_type(await kvclient.connect.aio(), kvclient._impl.AsyncClient)
    assert_type(client.keys.aio("users"), AsyncIterator[str])
    assert_type(client.aio, kvclient._impl.AsyncClient)
    assert_type(kvclient.Client.aio, type[kvclient._impl.AsyncClient])
    async with client.aio as connection:
        assert_type(connection, kvclient._impl.AsyncClient)
    assert_type(await client.bucket("b", kvclient.RAW).get.aio("k"), bytes | None)


async def mistakes(client: kvclient.Client) -> None:
    await client.ping()  # error: misc
    client.bucket("b", kvclient.TEXT).put("k", b"bytes")  # error: arg-type
    kvclient.connect(server="localhost")  # error: arg-type
    client.keys.submit("users")  # error: attr-defined
    client.aio.ping().hex()  # error: attr-defined
