"""PROMETHEUS_MULTIPROC_DIR must be a private directory of the server's user."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from controller.gunicorn_conf import MULTIPROC_ENV, MetricsDirError, prepare_metrics_dir


def test_a_missing_dir_is_made_private_and_a_stale_run_is_wiped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "metrics"
    monkeypatch.setenv(MULTIPROC_ENV, str(path))
    assert prepare_metrics_dir() == path
    assert path.stat().st_mode & 0o777 == 0o700
    (path / "counter_1.db").write_bytes(b"a previous run")
    prepare_metrics_dir()
    assert not list(path.iterdir())


@pytest.mark.parametrize("mode", [0o770, 0o777, 0o1777, 0o720])
def test_a_dir_others_may_write_to_is_refused(tmp_path: Path, mode: int,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "metrics"
    path.mkdir()
    path.chmod(mode)
    (path / "counter_1.db").write_bytes(b"planted")
    monkeypatch.setenv(MULTIPROC_ENV, str(path))
    with pytest.raises(MetricsDirError, match=r"writable by it alone \(chown it, chmod 700\)"):
        prepare_metrics_dir()
    assert (path / "counter_1.db").exists()  # nothing in it touched


def test_another_users_dir_or_a_symlink_is_refused(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "metrics"
    path.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(path)
    monkeypatch.setenv(MULTIPROC_ENV, str(link))
    with pytest.raises(MetricsDirError, match="is not a directory"):
        prepare_metrics_dir()
    # (the tests run as root: they make the lab's hosts)
    os.chown(path, 65534, 65534)
    monkeypatch.setenv(MULTIPROC_ENV, str(path))
    with pytest.raises(MetricsDirError, match="belongs to uid 65534"):
        prepare_metrics_dir()
