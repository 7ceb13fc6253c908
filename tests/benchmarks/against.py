"""Measuring this checkout against an older revision, in turns.

A benchmark with a ``--figures`` mode prints one line, ``figures: NAME VALUE UNIT, ...,
code in PATH``, measured in a fresh process. :func:`figures_in` runs that mode on the code
of a tree and reads the line back; :func:`checkout` makes the tree of an older revision (a
git worktree, given a copy of the benchmark script, which older trees predate);
:func:`compare` measures both trees in turns, so that the box getting faster or slower
during the runs moves both alike.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_FIGURES = re.compile(r"^figures: (?P<pairs>.+), code in (?P<code>.+)$", re.M)
_PAIR = re.compile(r"(?P<name>[\w/]+) (?P<value>[\d.]+)")


def figures_line(figures: dict[str, tuple[float, str]]) -> str:
    """The ``--figures`` line for ``{name: (value, unit)}``, naming the code measured."""
    import controller as package

    pairs = ", ".join(f"{name} {value:.3f} {unit}".rstrip()
                      for name, (value, unit) in figures.items())
    return f"figures: {pairs}, code in {Path(package.__file__).resolve().parents[1]}"


def figures_in(tree: Path, module: str, *args: str) -> dict[str, float]:
    """Run ``python -m module --figures *args`` on the code in ``tree`` (a fresh process)
    and return the figures it printed."""
    run = subprocess.run([sys.executable, "-m", module, "--figures", *args], cwd=tree,
                         capture_output=True, text=True, check=False,
                         env={**os.environ, "PYTHONPATH": str(tree)})
    found = _FIGURES.search(run.stdout)
    if run.returncode or not found:
        raise SystemExit(f"the run in {tree} failed:\n{run.stdout[-2000:]}{run.stderr[-4000:]}")
    if Path(found["code"]) != tree:  # (an installed copy of the package must not stand in)
        raise SystemExit(f"the run in {tree} measured the code in {found['code']}")
    return {pair["name"]: float(pair["value"]) for pair in _PAIR.finditer(found["pairs"])}


def compare(rev: str, module: str, runs: int,
            *args: str) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """``module``'s figures (its ``--figures`` mode, given ``args``) on this checkout and on
    ``rev``, measured in turns ``runs`` times: each side's figures, run by run."""
    ours: list[dict[str, float]] = []
    theirs: list[dict[str, float]] = []
    with checkout(rev, module.replace(".", "/") + ".py") as old:
        for _ in range(runs):
            ours.append(figures_in(REPO, module, *args))
            theirs.append(figures_in(old, module, *args))
    return ours, theirs


def median_of(runs: list[dict[str, float]], name: str) -> float:
    """The median of one figure over runs."""
    return statistics.median(figures[name] for figures in runs)


def side_by_side(ours: list[dict[str, float]], theirs: list[dict[str, float]], rev: str,
                 name: str = "POST") -> str:
    """One figure of both sides as a reader compares them: medians, runs and ratio."""
    mine, old = median_of(ours, name), median_of(theirs, name)
    return (f"this checkout {mine:.2f} ms ({_listed([f[name] for f in ours])}); {rev} "
            f"{old:.2f} ms ({_listed([f[name] for f in theirs])}); ratio {mine / old:.2f}")


def _listed(samples: list[float]) -> str:
    """Samples as a reader scans them: ``3.92, 4.47, 3.81``."""
    return ", ".join(f"{sample:.2f}" for sample in samples)


@contextlib.contextmanager
def checkout(rev: str, script: str) -> Iterator[Path]:
    """A detached git worktree of ``rev``, given this tree's copy of ``script`` (a path
    relative to the repository)."""
    tree = Path(tempfile.mkdtemp(prefix="relayfleet-against-")) / "tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), rev],
                   check=True, capture_output=True)
    try:
        shutil.copy(REPO / script, tree / script)
        shutil.copy(REPO / "tests" / "benchmarks" / "against.py",
                    tree / "tests" / "benchmarks" / "against.py")
        yield tree
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                       check=False, capture_output=True)
        shutil.rmtree(tree.parent, ignore_errors=True)
