"""schemathesis against the controller's /openapi.json (a live server on SQLite and a real
Redis, with some inventory in it): no 5xx, and answers match the documented schemas."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from tests.controller_client import Controller
from tests.schemathesis_run import run_schemathesis

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
        run_schemathesis(url, controller.admin, tmp_path,
                         checks="not_a_server_error,response_schema_conformance,"
                                "content_type_conformance",
                         max_examples=25, request_timeout=60,
                         # The scan dials the address it is given and answers 502 when
                         # nothing speaks SSH there: a fuzzer must not probe networks. Its
                         # own tests cover its refusals and answers. A channel's test
                         # notice posts to whatever URL a fuzzed channel holds (within the
                         # egress policy): the same rule applies.
                         exclude_paths=("/v1/ssh/host-key-scan",
                                        "/v1/alert-channels/{channel_id}/test"))
    finally:
        server.shutdown()
