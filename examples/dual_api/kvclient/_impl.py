"""kvclient's async implementation: a client of a small in-memory key-value service.

The service (:class:`Server`) keeps its data in a dict and answers after an
``asyncio.sleep`` that stands in for the network.  Only the async classes and
functions here are written by hand; ``kvclient/__init__.py`` makes their
blocking twins with :func:`greenportal.blocking`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

if sys.version_info >= (3, 11):
    from typing import Self
else:
    from typing_extensions import Self

V = TypeVar("V")


class KVError(Exception):
    """The service refused a request."""


class Server:
    """The in-memory service: buckets of keys."""

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self.buckets: dict[str, dict[str, bytes]] = {}

    async def request(self, bucket: str) -> dict[str, bytes]:
        await asyncio.sleep(self.latency)
        return self.buckets.setdefault(bucket, {})


class Codec(Generic[V]):
    """How a bucket's values are stored: *encode* to bytes and *decode* back."""

    def __init__(self, name: str) -> None:
        self.name = name

    def encode(self, value: V) -> bytes:
        raise NotImplementedError

    def decode(self, data: bytes) -> V:
        raise NotImplementedError


class _Text(Codec[str]):
    def encode(self, value: str) -> bytes:
        return value.encode()

    def decode(self, data: bytes) -> str:
        return data.decode()


class _Raw(Codec[bytes]):
    def encode(self, value: bytes) -> bytes:
        return value

    def decode(self, data: bytes) -> bytes:
        return data


TEXT: Codec[str] = _Text("text")
RAW: Codec[bytes] = _Raw("raw")


class AsyncConnection:
    """A connection to a :class:`Server`; closes when its ``async with`` block ends."""

    server_name: str

    def __init__(self, server: Server, *, name: str = "client") -> None:
        """Connect to *server*; *name* identifies the client in its logs."""
        self.server = server
        self.server_name = name
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def ping(self) -> float:
        """The round-trip time, in seconds."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.sleep(self.server.latency)
        return loop.time() - start

    async def close(self) -> None:
        self._closed = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class AsyncBucket(Generic[V]):
    """The keys of one bucket, with values decoded by a :class:`Codec`."""

    def __init__(self, connection: AsyncConnection, name: str, codec: Codec[V]) -> None:
        self.connection = connection
        self.name = name
        self.codec = codec

    async def get(self, key: str, default: V | None = None) -> V | None:
        data = await self.connection.server.request(self.name)
        return self.codec.decode(data[key]) if key in data else default

    async def put(self, key: str, value: V) -> None:
        data = await self.connection.server.request(self.name)
        data[key] = self.codec.encode(value)

    async def items(self) -> list[tuple[str, V]]:
        data = await self.connection.server.request(self.name)
        return [(key, self.codec.decode(value)) for key, value in sorted(data.items())]

    async def __aiter__(self) -> AsyncIterator[str]:
        for key, _ in await self.items():
            yield key


class AsyncTransaction:
    """Writes collected by :meth:`AsyncClient.transaction`, applied together at the end."""

    def __init__(self) -> None:
        self.pending: dict[tuple[str, str], bytes] = {}

    async def put(self, bucket: str, key: str, value: bytes) -> None:
        self.pending[bucket, key] = value


class AsyncClient(AsyncConnection):
    """The client: buckets, transactions and a key scan on top of a connection."""

    def bucket(self, name: str, codec: Codec[V]) -> AsyncBucket[V]:
        """The bucket *name*, its values read and written with *codec*."""
        return AsyncBucket(self, name, codec)

    async def keys(self, bucket: str, prefix: str = "") -> AsyncIterator[str]:
        """The keys of *bucket* that start with *prefix*, in order."""
        data = await self.server.request(bucket)
        for key in sorted(data):
            if key.startswith(prefix):
                yield key

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncTransaction]:
        """Collect writes; apply them all if the block ends without an exception."""
        txn = AsyncTransaction()
        yield txn
        for (bucket, key), value in txn.pending.items():
            data = await self.server.request(bucket)
            data[key] = value

    async def close(self) -> None:
        await super().close()


async def connect(server: Server | None = None, *, name: str = "client") -> AsyncClient:
    """A client connected to *server* (a new one by default)."""
    client = AsyncClient(server if server is not None else Server(), name=name)
    await client.ping()
    return client


async def copy_bucket(source: AsyncBucket[V], target: AsyncBucket[V]) -> int:
    """Copy every key of *source* into *target*; the number copied."""
    items = await source.items()
    for key, value in items:
        await target.put(key, value)
    return len(items)
