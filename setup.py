"""Build the optional C accelerator; everything else is in pyproject.toml.

``greenportal._speedups`` is optional: if it cannot be compiled (no C
compiler, or not CPython) the install still succeeds and greenportal runs
its pure-Python twin of the same code (see ``src/greenportal/_portal.py``).
Set ``GREENPORTAL_NO_EXTENSION=1`` to skip building it.
"""

import os
import platform

from setuptools import Extension, setup

extensions = []
if platform.python_implementation() == "CPython" and not os.environ.get(
    "GREENPORTAL_NO_EXTENSION"
):
    extensions.append(
        Extension(
            "greenportal._speedups",
            ["src/greenportal/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2"] if os.name != "nt" else [],
        )
    )

setup(ext_modules=extensions)
