"""The agent's offline bundle: everything a mail host needs to install the agent, no network.

``relayfleet-agent-V.tar.gz`` holds, under ``relayfleet-agent-V/``: ``install.sh``,
``make-cert.sh``, ``relayfleet-agent.service``, ``wheels/`` (the agent's own wheel, built
here from the source tree with ``shared.__version__`` stamped to V, and every dependency's
wheel for each supported Python on linux x86_64), ``requirements/X.Y.txt`` (per Python: every
wheel pinned with its SHA-256, for ``pip install --require-hashes``) and ``MANIFEST.json``
(version, Pythons, platform, the pins and every file's SHA-256). Beside it,
``relayfleet-agent-V.tar.gz.sha256`` in ``sha256sum`` format.

Dependencies are fetched with ``pip download --only-binary=:all: --python-version X.Y``. pip
evaluates environment markers (``tomli; python_version < "3.11"``) with the Python it runs
on, not the target one, so the closure is completed here: every wheel's requirements whose
markers hold for the target are asked for explicitly until nothing new turns up.

Errors: :class:`BundleError` (a :class:`controller.errors.ControllerError`) when a bundle is
missing, does not match its checksum, or cannot be built (no network, no pip, a wheel cache
others could write to); a bad version or Python is a :class:`shared.errors.ValidationError`.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import agent
import shared
from controller.errors import ControllerError
from shared.errors import ValidationError
from shared.schemas import AGENT_VERSION_PATTERN

SUPPORTED_PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13")
#: the one platform bundles are made for (pip's tag; markupsafe is the only compiled wheel)
PLATFORM = "manylinux2014_x86_64"
DIST_NAME = "relayfleet-agent"
ARCHIVE_PREFIX = "relayfleet-agent-"
ARCHIVE_SUFFIX = ".tar.gz"
#: the files install.sh needs beside the wheels (from deploy/agent in the source tree)
DEPLOY_FILES = ("install.sh", "make-cert.sh", "relayfleet-agent.service")
DEPLOY_DIR = Path(__file__).resolve().parents[1] / "deploy" / "agent"
#: PEP 440 public versions in their normalized form only, so the file name, the wheel's
#: version and what /v1/health reports are the same string (the API's grammar; install.sh
#: carries the same pattern)
VERSION_RE = re.compile(AGENT_VERSION_PATTERN)
_PYTHON_RE = re.compile(r"3\.(?:9|[1-9]\d)")
_ARCHIVE_RE = re.compile(rf"{re.escape(ARCHIVE_PREFIX)}(?P<version>{AGENT_VERSION_PATTERN})"
                         rf"{re.escape(ARCHIVE_SUFFIX)}")
#: zip's earliest date, for wheels and archives that come out byte-identical from the same input
_EPOCH = (1980, 1, 1, 0, 0, 0)
_EPOCH_S = 315532800
_PIP_TIMEOUT_S = 600


class BundleError(ControllerError):
    """An agent bundle is missing, corrupt, or cannot be built (the message says why)."""

    kind = "agent_bundle"
    status = 409


@dataclass(frozen=True)
class AgentBundle:
    """A bundle archive on disk, checked against its ``.sha256`` file."""

    path: Path
    version: str
    sha256: str
    size: int


def check_version(version: str) -> str:
    """The version if it is a normalized PEP 440 public version, else ValidationError."""
    if not VERSION_RE.fullmatch(version):
        raise ValidationError.for_field(
            "version", f"{version!r} is not a version like 1.2.3, 1.2.3rc1 or 1.2.3.post1")
    return version


def check_python(python: str) -> str:
    """``X.Y`` of a Python the agent runs on (3.9 or newer), else ValidationError."""
    if not _PYTHON_RE.fullmatch(python):
        raise ValidationError.for_field(
            "python", f"{python!r} is not a Python version the agent runs on (3.9 or newer, "
                      "written X.Y)")
    return python


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, in hex."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def archive_name(version: str) -> str:
    """The bundle's file name for a version."""
    return f"{ARCHIVE_PREFIX}{version}{ARCHIVE_SUFFIX}"


# -- finding a bundle ------------------------------------------------------------------
def find_bundle(bundle_dir: Path, version: str | None = None) -> AgentBundle:
    """The bundle of ``version`` (the newest when None) in ``bundle_dir``, its archive
    checked against its ``.sha256`` file; BundleError when missing or corrupt."""
    if version is not None:
        check_version(version)
    if not bundle_dir.is_dir():
        raise BundleError(f"no agent bundle directory {bundle_dir}: build a bundle with "
                          f"`relayfleet-controller agent-bundle --out {bundle_dir}`")
    if version is None:
        versions = [m.group("version") for m in map(_ARCHIVE_RE.fullmatch,
                                                    os.listdir(bundle_dir)) if m]
        if not versions:
            raise BundleError(f"no agent bundle in {bundle_dir}: build one with "
                              f"`relayfleet-controller agent-bundle --out {bundle_dir}`")
        version = max(versions, key=Version)
    path = bundle_dir / archive_name(version)
    if not path.is_file():
        raise BundleError(f"no agent bundle of version {version} in {bundle_dir} "
                          f"({path.name} is missing)")
    expected = _read_checksum(path)
    actual = file_sha256(path)
    if actual != expected:
        raise BundleError(f"{path.name} does not match its checksum file (sha256 {actual}, "
                          f"expected {expected}): the archive is corrupt; build it again")
    return AgentBundle(path=path, version=version, sha256=actual, size=path.stat().st_size)


def _read_checksum(path: Path) -> str:
    """The hex digest ``path``'s ``.sha256`` file gives for it (``sha256sum`` format)."""
    checksum = path.with_name(path.name + ".sha256")
    try:
        text = checksum.read_text()
    except OSError:
        raise BundleError(f"{checksum.name} is missing beside {path.name}: build the bundle "
                          "again") from None
    match = re.fullmatch(rf"([0-9a-f]{{64}}) [ *]{re.escape(path.name)}\n?", text)
    if match is None:
        raise BundleError(f"{checksum.name} is not a sha256sum line for {path.name}")
    return match.group(1)


# -- the agent's requirements ----------------------------------------------------------
def agent_requirements() -> list[str]:
    """What the agent needs (the core and the ``agent`` extra of relayfleet's metadata), as
    Requires-Dist lines without the extra (markers on the Python version kept)."""
    try:
        lines = metadata.requires("relayfleet") or []
    except metadata.PackageNotFoundError:
        raise BundleError("relayfleet's metadata is not installed (pip install -e .): the "
                          "agent's requirements are read from it") from None
    wanted = []
    for line in lines:
        spec, _, marker = line.partition(";")
        marker = marker.strip()
        if "extra" in marker:
            # setuptools writes the agent extra's entries as `SPEC; extra == "agent"`, with
            # any own marker before it: keep that, drop the extra; other extras are not ours
            marker, hits = re.subn(r'(?:\s+and\s+)?\bextra\s*==\s*"agent"', "", marker)
            if not hits or "extra" in marker:
                continue
            marker = marker.strip().removeprefix("(").removesuffix(")")
        wanted.append(f"{spec.strip()}; {marker}" if marker else spec.strip())
    return wanted


def _target_environment(python: str) -> dict[str, str]:
    """Marker variables of CPython ``python`` on linux x86_64 (patch level 0)."""
    return {"python_version": python, "python_full_version": f"{python}.0",
            "implementation_name": "cpython", "implementation_version": f"{python}.0",
            "platform_python_implementation": "CPython", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
            "platform_release": "", "platform_version": "", "extra": ""}


def requirements_for(lines: Iterable[str], python: str,
                     extras: Iterable[str] = ()) -> set[str]:
    """The requirements among ``lines`` whose markers hold on ``python`` (evaluated for each
    of ``extras``, those the requiring distribution was asked with), without markers."""
    environment = _target_environment(python)
    asked = {"", *extras}
    wanted = set()
    for line in lines:
        req = Requirement(line)
        if req.marker is not None and not any(
                req.marker.evaluate({**environment, "extra": extra}) for extra in asked):
            continue
        req.marker = None
        wanted.add(str(req))
    return wanted


# -- the agent's own wheel -------------------------------------------------------------
def agent_sources() -> list[tuple[str, bytes]]:
    """(path in the wheel, contents) of the packages ``agent`` and ``shared`` of this tree,
    sorted, without ``shared/testing*`` (fakes and captures for tests) and bytecode."""
    files = []
    for package in (agent, shared):
        root = Path(package.__file__ or "").parent
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root.parent).as_posix()
            if (not path.is_file() or "__pycache__" in path.parts
                    or path.suffix in (".pyc", ".pyo") or relative.startswith("shared/testing")):
                continue
            files.append((relative, path.read_bytes()))
    return sorted(files)


def _stamp_version(source: str, version: str) -> str:
    """shared/__init__.py with ``__version__`` set to ``version``."""
    stamped, count = re.subn(r'^__version__ = "[^"]*"$', f'__version__ = "{version}"', source,
                             flags=re.MULTILINE)
    if count != 1:
        raise BundleError("shared/__init__.py has no `__version__ = \"...\"` line to stamp")
    return stamped


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def build_agent_wheel(out_dir: Path, version: str, requires: Sequence[str],
                      sources: Sequence[tuple[str, bytes]] | None = None) -> Path:
    """Write the agent's wheel (``relayfleet-agent`` V, py3-none-any) into ``out_dir``.

    ``sources`` (path, bytes) replaces the packages read from this tree (tests build broken
    agents with it); ``shared/__init__.py`` gets ``__version__`` stamped to V either way.
    """
    check_version(version)
    if sources is None:
        sources = agent_sources()
    info = f"relayfleet_agent-{version}.dist-info"
    metadata_text = "".join([
        "Metadata-Version: 2.1\n", f"Name: {DIST_NAME}\n", f"Version: {version}\n",
        "Summary: The relayfleet agent: a small HTTPS API on a mail/PBX host\n",
        "License: Apache-2.0\n", "Requires-Python: >=3.9\n",
        *(f"Requires-Dist: {line}\n" for line in requires)])
    entries = [(name, _stamp_version(data.decode(), version).encode()
                if name == "shared/__init__.py" else data) for name, data in sources]
    entries += [
        (f"{info}/METADATA", metadata_text.encode()),
        (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: relayfleet-controller\n"
                          b"Root-Is-Purelib: true\nTag: py3-none-any\n"),
        (f"{info}/entry_points.txt",
         b"[console_scripts]\nrelayfleet-agent = agent.cli:main\n"),
    ]
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in entries)
    entries.append((f"{info}/RECORD", (record + f"{info}/RECORD,,\n").encode()))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"relayfleet_agent-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in entries:
            entry = zipfile.ZipInfo(name, date_time=_EPOCH)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(entry, data)
    return path


# -- dependencies ----------------------------------------------------------------------
def _wheel_requires(wheel: Path) -> tuple[str, list[str]]:
    """A wheel's (normalized name, Requires-Dist lines)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist()
                    if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        text = archive.read(name).decode("utf-8", "replace")
    headers = text.split("\n\n", 1)[0]
    dist = re.search(r"^Name: (.+)$", headers, re.MULTILINE)
    return (canonicalize_name(dist.group(1).strip()) if dist else "",
            re.findall(r"^Requires-Dist: (.+)$", headers, re.MULTILINE))


def _pip_download(requirements: Sequence[str], python: str, dest: Path) -> None:
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--no-input", "--only-binary=:all:", "--python-version", python,
            "--implementation", "cp", "--platform", PLATFORM, "--dest", str(dest),
            *sorted(requirements)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S,
                              check=False)
    except subprocess.TimeoutExpired:
        raise BundleError(f"downloading the agent's dependencies for Python {python} took "
                          f"more than {_PIP_TIMEOUT_S} s: is PyPI reachable?") from None
    if proc.returncode != 0:
        said = [line for line in proc.stderr.splitlines()
                if line.strip() and not line.startswith("WARNING: Location")][-4:]
        raise BundleError(
            f"downloading the agent's dependencies for Python {python} failed (is PyPI, or "
            f"the index in pip's configuration, reachable from here?); pip said: "
            + " | ".join(said or [f"exit {proc.returncode}"]))


def download_dependencies(requirements: Sequence[str], python: str, dest: Path,
                          cache_dir: Path | None = None) -> list[Path]:
    """Download the wheels ``requirements`` need on CPython ``python`` (linux x86_64) into
    ``dest``; return them. With ``cache_dir``, a set already downloaded for the same
    requirements, Python and platform is copied from there (and a new one kept there)."""
    check_python(python)
    dest.mkdir(parents=True, exist_ok=True)
    cached = cached_set(cache_dir, requirements, python) if cache_dir else None
    if cache_dir is not None:
        # Its wheels go into every host's agent, run as root: only we may write there.
        cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        check_private(cache_dir)
    if cached is None or not (cached / ".complete").is_file():
        with tempfile.TemporaryDirectory(prefix="relayfleet-wheels-") as scratch:
            wheels = _resolve_closure(requirements, python, Path(scratch))
            if cached is None:
                return [Path(shutil.copy2(wheel, dest)) for wheel in wheels]
            # Complete sets only: built aside, marked, then renamed into place.
            assert cache_dir is not None
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache_dir))
            for wheel in wheels:
                shutil.copy2(wheel, staging)
            (staging / ".complete").touch()
            if not (cached / ".complete").is_file():
                # an incomplete leftover of a build that died (a complete set is another
                # build's, finished meanwhile, that others may be copying from: it stays)
                shutil.rmtree(cached, ignore_errors=True)
            try:
                staging.rename(cached)
            except OSError:
                # Another build (tests run in parallel) put the same set there meanwhile.
                shutil.rmtree(staging, ignore_errors=True)
                if not (cached / ".complete").is_file():
                    raise
    check_private(cached)
    wheels = sorted(cached.glob("*.whl"))
    for wheel in wheels:
        check_private(wheel)
    return [Path(shutil.copy2(wheel, dest)) for wheel in wheels]


def cached_set(cache_dir: Path, requirements: Sequence[str], python: str) -> Path:
    """Where ``cache_dir`` keeps the wheels of ``requirements`` on ``python``."""
    key = hashlib.sha256(json.dumps([python, PLATFORM, sorted(requirements)])
                         .encode()).hexdigest()[:16]
    return cache_dir / f"py{python}-{key}"


def check_private(path: Path) -> None:
    """BundleError unless ``path`` (not a symlink) belongs to this process's user and no one
    else may write to it (the wheel cache's directories and files)."""
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        raise BundleError(f"the wheel cache holds a symlink, {path}: refused (remove it)")
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise BundleError(
            f"{path} belongs to uid {info.st_uid} with mode {stat.filemode(info.st_mode)}: a "
            f"wheel cache must be this user's (uid {os.geteuid()}) and writable by it alone, "
            f"since its wheels are installed as root on every host (chown it, chmod go-w, "
            f"or remove it)")


def _extras_asked(lines: Iterable[str]) -> dict[str, set[str]]:
    """The extras requirement ``lines`` ask of each distribution (``apispec[marshmallow]``),
    by normalized name."""
    extras: dict[str, set[str]] = {}
    for line in lines:
        req = Requirement(line)
        extras.setdefault(canonicalize_name(req.name), set()).update(req.extras)
    return extras


def _resolve_closure(requirements: Sequence[str], python: str, scratch: Path) -> list[Path]:
    """Download until every requirement whose marker holds on ``python`` is asked for."""
    wanted = requirements_for(requirements, python)
    for attempt in range(10):
        # A fresh directory each round: a wider set may resolve to other versions.
        dest = scratch / str(attempt)
        _pip_download(sorted(wanted), python, dest)
        wheels = sorted(dest.glob("*.whl"))
        extras = _extras_asked(wanted)
        more = set(wanted)
        for wheel in wheels:
            name, lines = _wheel_requires(wheel)
            more |= requirements_for(lines, python, extras.get(name, ()))
        if more == wanted:
            return wheels
        wanted = more
    raise BundleError(f"the agent's dependencies for Python {python} did not settle after "
                      "10 rounds of pip download")


def wheel_pin(wheel: Path) -> tuple[str, str]:
    """(normalized name, version) from a wheel's file name."""
    parts = wheel.name[:-len(".whl")].split("-")
    if len(parts) not in (5, 6):
        raise BundleError(f"{wheel.name} is not a wheel file name")
    return canonicalize_name(parts[0]), parts[1]


# -- the bundle ------------------------------------------------------------------------
def build_bundle(out_dir: Path, *, version: str | None = None,
                 pythons: Sequence[str] = SUPPORTED_PYTHONS,
                 cache_dir: Path | None = None,
                 agent_sources: Sequence[tuple[str, bytes]] | None = None) -> AgentBundle:
    """Build ``relayfleet-agent-V.tar.gz`` and its ``.sha256`` in ``out_dir``.

    V defaults to ``shared.__version__``; ``cache_dir`` keeps downloaded dependency wheels
    (see :func:`download_dependencies`); ``agent_sources`` replaces the agent's own files
    (see :func:`build_agent_wheel`). An existing bundle of V is replaced.
    """
    version = check_version(version or shared.__version__)
    pythons = sorted({check_python(p) for p in pythons}, key=lambda p: int(p.split(".")[1]))
    if not pythons:
        raise ValidationError.for_field("python", "name at least one Python")
    missing = [name for name in DEPLOY_FILES if not (DEPLOY_DIR / name).is_file()]
    if missing:
        raise BundleError(f"{', '.join(missing)} not found in {DEPLOY_DIR}: agent bundles "
                          "are built from a relayfleet source tree")
    requires = agent_requirements()
    top = f"{ARCHIVE_PREFIX}{version}"
    with tempfile.TemporaryDirectory(prefix="relayfleet-bundle-") as scratch:
        stage = Path(scratch) / top
        wheels_dir = stage / "wheels"
        own = build_agent_wheel(wheels_dir, version, requires, agent_sources)
        per_python: dict[str, list[Path]] = {}
        # pip itself too: install.sh runs the bundle's pip (from its wheel), so a host's old
        # pip (Debian 11 ships 20.3) or a missing ensurepip does not matter. One pip for all,
        # the newest the oldest Python takes: each pip wheel is 1.8 MB.
        pip = "pip"
        for python in pythons:
            wheels = download_dependencies([*requires, pip], python,
                                           Path(scratch) / "deps" / python, cache_dir)
            per_python[python] = [own, *wheels]
            pip = next((f"pip=={wheel_pin(w)[1]}" for w in wheels
                        if wheel_pin(w)[0] == "pip"), pip)
        for wheels in per_python.values():
            for wheel in wheels[1:]:
                if not (wheels_dir / wheel.name).exists():
                    shutil.copy2(wheel, wheels_dir / wheel.name)
        hashes = {wheel.name: file_sha256(wheels_dir / wheel.name)
                  for wheel in wheels_dir.iterdir()}
        pins: dict[str, list[str]] = {}
        (stage / "requirements").mkdir()
        for python, wheels in per_python.items():
            pins[python] = sorted({"{}=={}".format(*wheel_pin(w)) for w in wheels})
            (stage / "requirements" / f"{python}.txt").write_text(
                _requirements_file(pins[python], hashes, _asked_extras(wheels, python)))
        for name in DEPLOY_FILES:
            shutil.copyfile(DEPLOY_DIR / name, stage / name)
        manifest = {
            "name": DIST_NAME, "version": version, "pythons": pythons,
            "platform": PLATFORM, "requires_python": ">=3.9",
            "agent_wheel": own.name, "requirements": requires, "pinned": pins,
            "wheels": {name: hashes[name] for name in sorted(hashes)},
            "files": {path.relative_to(stage).as_posix(): file_sha256(path)
                      for path in sorted(stage.rglob("*")) if path.is_file()},
        }
        (stage / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True)
                                             + "\n")
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / archive_name(version)
        # Written aside (a name of its own: builds may run at once), then renamed.
        partial = _aside(out_dir, path.name)
        _write_tar(stage, partial)
        partial.chmod(0o644)
        digest = file_sha256(partial)
        partial.replace(path)
        checksum = path.with_name(path.name + ".sha256")
        partial = _aside(out_dir, checksum.name)
        partial.write_text(f"{digest}  {path.name}\n")
        partial.chmod(0o644)
        partial.replace(checksum)
    return AgentBundle(path=path, version=version, sha256=digest, size=path.stat().st_size)


def _asked_extras(wheels: Sequence[Path], python: str) -> dict[str, set[str]]:
    """The extras the wheels ask of each other on ``python`` (``apispec[marshmallow]``)."""
    return _extras_asked(line for wheel in wheels
                         for line in requirements_for(_wheel_requires(wheel)[1], python))


def _aside(directory: Path, name: str) -> Path:
    """A new empty file in ``directory`` to write ``name``'s contents into first."""
    handle, aside = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
    os.close(handle)
    return Path(aside)


def _requirements_file(pins: Sequence[str], hashes: dict[str, str],
                       extras: dict[str, set[str]]) -> str:
    """``name[extras]==version --hash=sha256:...`` lines (every file of that release in the
    bundle), for ``pip install --require-hashes``: with the extras the dependencies ask for
    pinned too, or pip 23 takes ``apispec[marshmallow]`` for an unpinned requirement."""
    lines = []
    for pin in pins:
        name, version = pin.split("==")
        digests = sorted(digest for wheel, digest in hashes.items()
                         if wheel_pin(Path(wheel)) == (name, version))
        asked = ",".join(sorted(extras.get(name, ())))
        lines.append(f"{name}[{asked}]=={version}" if asked else pin)
        lines[-1] += "".join(f" --hash=sha256:{d}" for d in digests)
    return "\n".join(lines) + "\n"


def _write_tar(stage: Path, out: Path) -> None:
    """A gzipped tar of ``stage`` (its name as top directory): sorted entries, fixed times
    and owners, so the same input gives the same bytes."""
    def entry(path: Path) -> tarfile.TarInfo:
        info = tarfile.TarInfo(path.relative_to(stage.parent).as_posix())
        info.mtime = _EPOCH_S
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        if path.is_dir():
            info.type, info.mode = tarfile.DIRTYPE, 0o755
        else:
            info.size = path.stat().st_size
            info.mode = 0o755 if path.suffix == ".sh" else 0o644
        return info

    with out.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                              mtime=0) as zipped, \
            tarfile.open(fileobj=zipped, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in [stage, *sorted(stage.rglob("*"))]:
            info = entry(path)
            if info.isdir():
                tar.addfile(info)
            else:
                with path.open("rb") as data:
                    tar.addfile(info, data)


def describe(bundle: AgentBundle) -> str:
    """The CLI's lines for a bundle: path, version, size and sha256."""
    return (f"path: {bundle.path}\nversion: {bundle.version}\nsize: {bundle.size} bytes "
            f"({bundle.size / 1e6:.1f} MB)\nsha256: {bundle.sha256}")


__all__ = ["DIST_NAME", "PLATFORM", "SUPPORTED_PYTHONS", "AgentBundle", "BundleError",
           "agent_requirements", "agent_sources", "archive_name", "build_agent_wheel",
           "build_bundle", "cached_set", "check_private", "check_python", "check_version",
           "describe", "download_dependencies", "file_sha256", "find_bundle",
           "requirements_for", "wheel_pin"]
