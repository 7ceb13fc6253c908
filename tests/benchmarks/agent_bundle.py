"""Agent bundle benchmark: prints figures, asserts nothing.

``python -m tests.benchmarks.agent_bundle [--python X.Y ...] [--cold] [--runs 3]``

Builds the offline agent bundle into a temporary directory and prints its size, total and
per part (the agent's own wheel, the dependencies' wheels, pip's wheels, the rest:
install.sh, the unit, requirements, MANIFEST.json), the number of wheels and their size
per Python (what one host installs), and the build time: median of ``--runs`` builds with
the dependency wheels taken from the lab cache (``$RELAYFLEET_LAB_CACHE/agent-wheels``)
and, with ``--cold``, one build that downloads everything (needs PyPI).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from controller.agent_bundle import SUPPORTED_PYTHONS, AgentBundle, build_bundle
from tests.lab.agent_install import WHEEL_CACHE


def timed_build(out: Path, pythons: Sequence[str],
                cache: Path | None) -> tuple[float, AgentBundle]:
    """Seconds one build took, and the bundle."""
    start = time.perf_counter()
    bundle = build_bundle(out, pythons=pythons, cache_dir=cache)
    return time.perf_counter() - start, bundle


def parts(bundle: AgentBundle) -> tuple[dict[str, int], dict[str, tuple[int, int]]]:
    """Bytes per part of the archive (uncompressed members), and per Python the number
    and bytes of the wheels a host of that Python installs."""
    sizes = {"agent wheel": 0, "dependency wheels": 0, "pip wheels": 0, "other files": 0}
    top = f"relayfleet-agent-{bundle.version}"
    with tarfile.open(bundle.path) as archive:
        texts = {member.name.removeprefix(top + "/"): member for member in archive
                 if member.isfile()}
        manifest = json.loads(_read(archive, texts["MANIFEST.json"]))
        requirements = {python: _read(archive, texts[f"requirements/{python}.txt"])
                        for python in manifest["pythons"]}
    for name, member in texts.items():
        wheel = name.removeprefix("wheels/")
        if not wheel.endswith(".whl"):
            kind = "other files"
        elif wheel.startswith("relayfleet_agent-"):
            kind = "agent wheel"
        else:
            kind = "pip wheels" if wheel.startswith("pip-") else "dependency wheels"
        sizes[kind] += member.size
    per_python = {}
    for python, text in requirements.items():
        # The files of the pinned releases that this Python can take.
        tag = f"-cp{python.replace('.', '')}-"
        files = [wheel for wheel, digest in manifest["wheels"].items()
                 if f"sha256:{digest}" in text and ("-py3-" in wheel or tag in wheel)]
        per_python[python] = (len(files), sum(texts[f"wheels/{w}"].size for w in files))
    return sizes, per_python


def _read(archive: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    handle = archive.extractfile(member)
    assert handle is not None
    return handle.read().decode()


def main() -> None:
    """Build, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", action="append", dest="pythons")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="also one build without a cache")
    args = parser.parse_args()
    pythons = args.pythons or list(SUPPORTED_PYTHONS)
    with tempfile.TemporaryDirectory(prefix="rf-bundle-bench-") as scratch:
        root = Path(scratch)
        if args.cold:
            seconds, _ = timed_build(root / "cold", pythons, None)
            print(f"build, downloading every wheel: {seconds:.1f} s")
        # Fills the cache if it is empty (its time is not counted with the warm runs).
        first, bundle = timed_build(root / "warm", pythons, WHEEL_CACHE)
        times = [timed_build(root / "warm", pythons, WHEEL_CACHE)[0] for _ in range(args.runs)]
        print(f"first build with the cache at {WHEEL_CACHE}: {first:.1f} s")
        print(f"build, dependency wheels cached: median {statistics.median(times):.2f} s "
              f"of {args.runs} (min {min(times):.2f}, max {max(times):.2f})")
        sizes, per_python = parts(bundle)
        print(f"bundle {bundle.path.name}: {bundle.size / 1e6:.2f} MB compressed, "
              f"{sum(sizes.values()) / 1e6:.2f} MB of files, for Python {', '.join(pythons)}")
        for kind, size in sizes.items():
            print(f"  {kind:18} {size / 1e3:9.1f} kB")
        for python, (count, size) in per_python.items():
            print(f"  installed on Python {python}: {count} wheels, {size / 1e3:.1f} kB")


if __name__ == "__main__":
    main()
