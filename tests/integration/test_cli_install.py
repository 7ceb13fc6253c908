"""``pip install relayfleet[cli]`` into a fresh virtualenv: the CLI works, and nothing of
the server side (Flask, Celery, SQLAlchemy, paramiko) came with it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_the_cli_extra_installs_alone(tmp_path: Path) -> None:
    # A copy of the source tree: the build must not leave files in the checkout.
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "__pycache__", "*.egg-info", "build", ".mypy_cache", ".ruff_cache",
        ".pytest_cache"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"{source}[cli]"],
                         capture_output=True, text=True, timeout=600, check=False)
    assert pip.returncode == 0, pip.stderr[-3000:]
    listed = subprocess.run([str(venv / "bin" / "pip"), "list", "--format", "json"],
                            capture_output=True, text=True, timeout=120, check=True)
    installed = {item["name"].lower().replace("_", "-") for item in json.loads(listed.stdout)}
    assert {"click", "rich", "httpx", "relayfleet"} <= installed
    assert not installed & {"flask", "flask-smorest", "celery", "kombu", "sqlalchemy",
                            "alembic", "paramiko", "psycopg", "gunicorn", "cheroot"}, installed
    helped = subprocess.run([str(venv / "bin" / "relayfleet"), "flush", "--help"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert helped.returncode == 0 and "Examples:" in helped.stdout, helped.stderr
    refused = subprocess.run([str(venv / "bin" / "relayfleet"), "--api", "http://127.0.0.1:9",
                              "--token", "x" * 20, "fleet"],
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 3, refused.stderr
    assert "controller unreachable at http://127.0.0.1:9" in refused.stderr
