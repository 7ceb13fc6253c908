"""Run the schemathesis CLI against a live relayfleet API (agent or controller)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_schemathesis(url: str, token: str, report_dir: Path, *, checks: str,
                     max_examples: int, request_timeout: int,
                     exclude_paths: tuple[str, ...] = ()) -> str:
    """schemathesis over ``url``/openapi.json with a bearer token; fail with its output."""
    excluded = [arg for path in exclude_paths for arg in ("--exclude-path", path)]
    schemathesis = Path(sys.executable).with_name("schemathesis")
    proc = subprocess.run(
        [str(schemathesis), "run", f"{url}/openapi.json",
         "-H", f"Authorization: Bearer {token}", "--checks", checks,
         "--max-examples", str(max_examples), "--request-timeout", str(request_timeout),
         "--generation-deterministic", "--suppress-health-check", "all",
         "--report-junit-path", str(report_dir / "junit.xml"), *excluded],
        capture_output=True, text=True, timeout=900, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    return out
