"""The demo application: an aiohttp service over a synchronous application layer.

The layer is plain sync code, three modules deep, that only emits SQL:

* :mod:`app.services` - the business rules (a customer summary);
* :mod:`app.repositories` - one class per table group, each method one query;
* :mod:`app.facade` - the small sync DB facade the repositories call; it hands
  every query to an async driver through a *bridge* (how sync code waits for
  a coroutine), which is the only thing that differs between the variants.

Below the facade, :mod:`app.drivers` holds the async drivers (SQLite through
aiosqlite, PostgreSQL through asyncpg) and the schema with its seed data.
:mod:`app.native` is the same layer rewritten with ``async``/``await``, the
reference.  :mod:`app.server` is the aiohttp service: one route per variant
(``/<variant>/customers/<id>/summary``), see :data:`app.server.VARIANTS`.
:mod:`app.load` is the load generator the demo and the macro benchmark use,
and :mod:`app.process` runs the service in a child process for them.
"""
