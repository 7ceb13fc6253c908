"""LocalExecutor's failures are ExecutorErrors, which the change transaction reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.errors import ExecutorError
from shared.executor import LocalExecutor


def test_remove_of_a_missing_file_is_no_error(tmp_path: Path) -> None:
    LocalExecutor().remove(str(tmp_path / "absent"))


def test_a_refused_remove_is_an_executor_error(tmp_path: Path) -> None:
    """Before, the OSError escaped the temp-file clean-up (which suppresses ExecutorError
    only) and ended the operation with a traceback instead of an answer."""
    parent = tmp_path / "a-file"
    parent.write_text("")
    with pytest.raises(ExecutorError, match=r"^cannot remove .*/a-file/x: Not a directory$"):
        LocalExecutor().remove(str(parent / "x"))
