"""The examples in the docstrings run as tests (against the installed package)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = ("state", "streams", "encoders")
MODULES = sorted(
    info.name
    for package in PACKAGES
    for info in pkgutil.walk_packages(
        importlib.import_module(package).__path__, prefix=f"{package}."
    )
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
