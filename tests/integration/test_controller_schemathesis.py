"""schemathesis against the controller's /openapi.json (a live server on SQLite and a real
Redis, with some inventory in it): no 5xx, and answers match the documented schemas."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from tests.controller_client import Controller

pytestmark = [pytest.mark.slow]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_schemathesis_finds_no_server_errors(controller: Controller, tmp_path: Path) -> None:
    acme = controller.tenant("Acme")
    site = controller.site(acme, "Leeds")
    for index in range(3):
        controller.host(site, f"pbx{index}", tags=["pbx"])
    server = make_server("127.0.0.1", 0, controller.app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        schemathesis = Path(sys.executable).with_name("schemathesis")
        proc = subprocess.run(
            [str(schemathesis), "run", f"{url}/openapi.json",
             "-H", f"Authorization: Bearer {controller.admin}",
             "--checks", "not_a_server_error,response_schema_conformance,"
                         "content_type_conformance",
             "--max-examples", "25", "--request-timeout", "60",
             "--generation-deterministic", "--suppress-health-check", "all",
             "--report-junit-path", str(tmp_path / "junit.xml")],
            capture_output=True, text=True, timeout=600, check=False)
    finally:
        server.shutdown()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
