"""What reached the lab's smarthost sink: the subjects of the messages it took."""

from __future__ import annotations

import time

from tests.lab.lab import Lab


def subjects(lab: Lab) -> set[str]:
    """The Subject of every message the lab's smarthost has taken ("" for none)."""
    return {next((ln[9:] for ln in m["data"].splitlines() if ln.startswith("Subject: ")), "")
            for m in lab.smarthost.messages()}


def wait_for_subjects(lab: Lab, wanted: set[str], timeout_s: float = 60) -> None:
    """Wait until messages with all the ``wanted`` subjects reached the smarthost; fail
    naming the ones missing after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not wanted <= subjects(lab) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert wanted <= subjects(lab), f"never reached the smarthost: {wanted - subjects(lab)}"
