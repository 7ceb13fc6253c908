"""``relayfleet[cli]`` is the CLI and nothing of the server side."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER_SIDE = ("flask", "flask_smorest", "celery", "kombu", "sqlalchemy", "alembic",
               "paramiko", "psycopg", "gunicorn", "cheroot")


def test_the_cli_extra_is_click_rich_and_httpx_over_a_small_core() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [dep.split(">")[0].split("<")[0].split("[")[0].strip()
             for dep in project["optional-dependencies"]["cli"]]
    assert names == ["click", "rich", "httpx"]
    core = [dep.split(">")[0].strip() for dep in project["dependencies"]]
    assert not {name.replace("-", "_") for name in core} & set(SERVER_SIDE), core
    assert project["scripts"]["relayfleet"] == "controller.client.main:main"


def test_the_cli_runs_with_the_server_side_missing() -> None:
    # An import hook refuses every server-side package, as on a laptop with only the extra.
    blocker = (
        "import sys, importlib.abc\n"
        "class Refuse(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        f"        if name.split('.')[0] in {SERVER_SIDE!r}:\n"
        "            raise ImportError('not installed: ' + name)\n"
        "sys.meta_path.insert(0, Refuse())\n"
        "sys.argv = ['relayfleet'] + sys.argv[1:]\n"
        "from controller.client.main import main\n"
        "main()\n")
    for args in (["--help"], ["smarthost", "set", "--help"], ["hosts", "import", "--help"],
                 ["completion", "bash"]):
        proc = subprocess.run([sys.executable, "-c", blocker, *args], capture_output=True,
                              text=True, cwd=ROOT, timeout=60, check=False)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
        assert "Usage" in proc.stdout or "complete" in proc.stdout
    proc = subprocess.run([sys.executable, "-c", blocker, "--api", "http://127.0.0.1:9",
                           "--token", "x" * 20, "whoami"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, check=False)
    assert proc.returncode == 3 and "controller unreachable at http://127.0.0.1:9" in proc.stderr
