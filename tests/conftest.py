"""Shared fixtures: the lab (real sendmail hosts in namespaces) for integration tests."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.lab.lab import Lab, LabHost

_names = itertools.count(1)


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One lab (bridge, DNS, sinks) for the whole session, torn down even on failure."""
    the_lab = Lab(Path(tmp_path_factory.mktemp("lab")))
    try:
        the_lab.start()
        yield the_lab
    finally:
        the_lab.close()


@pytest.fixture
def make_host(lab: Lab) -> Iterator[Callable[..., LabHost]]:
    """Build fresh lab hosts for one test; they are removed when the test ends."""
    made: list[LabHost] = []

    def factory(layout: str = "debian", start: bool = True) -> LabHost:
        host = lab.add_host(f"{layout[:3]}{next(_names)}", layout, start=start)
        made.append(host)
        return host

    yield factory
    for host in made:
        host.close()


@pytest.fixture(params=["debian", "centos"])
def host(request: pytest.FixtureRequest, make_host: Callable[..., LabHost]) -> LabHost:
    """A fresh, running lab host of each layout."""
    return make_host(request.param)
