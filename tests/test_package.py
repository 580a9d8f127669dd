"""Packaging and public-surface hygiene."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import pathlib
import types

import greenportal

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_all_lists_every_public_name() -> None:
    public = {
        name
        for name, value in vars(greenportal).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(greenportal.__all__) - {"__version__"}


def test_public_objects_claim_the_package() -> None:
    for name in greenportal.__all__:
        obj = getattr(greenportal, name)
        if callable(obj):
            assert obj.__module__ == "greenportal", name


def test_version_matches_metadata() -> None:
    assert importlib.metadata.version("greenportal") == greenportal.__version__


def test_py_typed_is_shipped() -> None:
    assert importlib.resources.files("greenportal").joinpath("py.typed").is_file()


def test_every_public_name_is_in_the_reference_docs() -> None:
    reference = REPO / "docs" / "reference.rst"
    if not reference.exists():  # running from an installed wheel without the repo
        return
    text = reference.read_text()
    missing = [n for n in greenportal.__all__ if n != "__version__" and n not in text]
    assert not missing
