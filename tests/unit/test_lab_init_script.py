"""The lab's Debian sendmail init script: Debian's own, with only its fixed waits polled."""

from __future__ import annotations

import difflib

import pytest

from tests.lab.lab import DEBIAN_INIT_SCRIPT, LabError, prompt_init_script


def test_only_the_fixed_waits_change_and_each_poll_is_bounded_by_them() -> None:
    shipped = DEBIAN_INIT_SCRIPT.read_text()
    prompt = prompt_init_script(shipped)
    removed, added = [], []
    for line in difflib.ndiff(shipped.splitlines(), prompt.splitlines()):
        if line.startswith("- "):
            removed.append(line[2:].strip())
        elif line.startswith("+ "):
            added.append(line[2:].strip())
    assert removed == ["sleep 2;"] * 4
    assert len(added) == 4
    # at most 20 steps of 0.1 s: never longer than the 2 s each replaces
    assert all("sleep 0.1" in poll and "20 ]" in poll for poll in added)
    assert '"$MTAL_PIDFILE"' in added[0] and ":0019 " in added[0]  # the daemon listening
    assert [poll.split()[2] for poll in added[1:]] == [
        "$STOP_MTAL_CMD", "$STOP_MTAQ_CMD", "$STOP_MSP_CMD"]


def test_a_script_the_lab_does_not_know_is_refused_not_half_changed() -> None:
    shipped = DEBIAN_INIT_SCRIPT.read_text()
    with pytest.raises(LabError, match="not the script the lab knows"):
        prompt_init_script(shipped.replace("# Update permissions on smsocket", "#"))
