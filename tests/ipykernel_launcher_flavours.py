"""Start an ipykernel on one event loop flavour, for tests/test_ipython.py.

Used as the ``argv`` of a throwaway kernelspec::

    python tests/ipykernel_launcher_flavours.py -f {connection_file}

The flavour comes from ``GREENPORTAL_TEST_KERNEL_FLAVOUR``:

* ``asyncio-c``: asyncio as it is, with the C Task;
* ``asyncio-py``: the pure-Python Task, swapped in before anything creates one;
* ``asyncio-debug``: asyncio's debug mode (the test also sets PYTHONASYNCIODEBUG=1);
* ``asyncio-eager``: every loop the kernel makes gets ``asyncio.eager_task_factory``;
* ``uvloop``: uvloop's event loop policy, so tornado's loop is a uvloop loop.

The policies are set before ipykernel creates its loops; on 3.14+ asyncio
deprecates them, which only warns in this process.
"""

from __future__ import annotations

import asyncio
import asyncio.tasks
import os
import sys
from typing import Any


def _set_flavour(flavour: str) -> None:
    if flavour in ("asyncio-c", "asyncio-debug"):
        return
    if flavour == "asyncio-py":
        py_task: Any = asyncio.tasks._PyTask  # type: ignore[attr-defined]
        asyncio.tasks.Task = py_task  # type: ignore[misc]
        asyncio.Task = py_task  # type: ignore[misc]
        return
    if flavour == "asyncio-eager":
        factory = asyncio.eager_task_factory  # type: ignore[attr-defined]

        class EagerPolicy(asyncio.DefaultEventLoopPolicy):
            def new_event_loop(self) -> asyncio.AbstractEventLoop:
                loop = super().new_event_loop()
                loop.set_task_factory(factory)
                return loop

        asyncio.set_event_loop_policy(EagerPolicy())
        return
    if flavour == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        return
    raise SystemExit(f"unknown GREENPORTAL_TEST_KERNEL_FLAVOUR {flavour!r}")


if __name__ == "__main__":
    _set_flavour(os.environ.get("GREENPORTAL_TEST_KERNEL_FLAVOUR", "asyncio-c"))
    # This file's directory is sys.path[0]: take it off, so that the kernel's
    # imports are not shadowed by the test modules.
    del sys.path[0]
    from ipykernel import kernelapp

    kernelapp.launch_new_instance()
