"""A Debian 11 ("bullseye") tree with Debian's own Python 3.9, for running the agent there.

``bullseye_tree()`` builds it once with ``debootstrap --variant=minbase`` into
``$RELAYFLEET_LAB_CACHE/bullseye`` and reuses it afterwards: from deb.debian.org, or from
archive.debian.org once bullseye has moved there (its LTS ended in August 2026). The tree is
built in a temporary directory beside it and renamed into place only when debootstrap
finished, so a half-built tree is never reused. ``run_in_tree()`` runs a script chrooted into
it inside a mount namespace of its own (and, unless told otherwise, a PID namespace whose
processes all end with it): the tree is mounted read-only there, with /proc, a fresh /tmp and
the given bind mounts on top, and every mount vanishes with the namespace, even when the run
is killed.

``python -m tests.lab.bullseye`` builds the tree (if needed) and prints its Python version.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.lab.lab import CACHE_DIR, LabError

#: where bullseye is, tried in this order: the mirrors, then the archive it moves to
MIRRORS = ("http://deb.debian.org/debian", "http://archive.debian.org/debian")
SUITE = "bullseye"
#: what the tests use there, named (not left to arrive as some package's dependency):
#: Python 3.9 and its venv, and openssl for install.sh's certificate
PACKAGES = ("python3", "python3-venv", "openssl")
#: Debian's /etc/hosts as its installer writes it (without the host's own name)
ETC_HOSTS = ("127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"
             "ff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n")
#: written last into a finished tree: a tree without it is never used
STAMP = ".relayfleet-complete"
_HINT = "run `bash deploy/dev/bootstrap.sh` as root (it installs debootstrap and util-linux)"


def bullseye_tree(cache_dir: Path = CACHE_DIR) -> Path:
    """The finished Debian 11 tree, built with debootstrap on first use (needs root)."""
    tree = cache_dir / SUITE
    if _finished(tree):
        return tree
    for tool in ("debootstrap", "unshare", "chroot"):
        if shutil.which(tool) is None:
            raise LabError(f"{tool} is not installed: {_HINT}")
    if os.geteuid() != 0:
        raise LabError("building the Debian 11 tree needs root (debootstrap, chroot)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    # One builder at a time; the others wait and then find the stamp.
    with open(cache_dir / f".{SUITE}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _finished(tree):
            return tree
        for stale in cache_dir.glob(f".{SUITE}.build-*"):
            _remove_tree(stale)
        if tree.exists():  # built from another package list, or not one of ours
            _remove_tree(tree)
        staging = Path(tempfile.mkdtemp(prefix=f".{SUITE}.build-", dir=cache_dir))
        try:
            mirror = _debootstrap(staging, cache_dir)
            python = staging / "usr/bin/python3.9"
            if not python.exists():
                raise LabError(f"debootstrap finished but {python} is missing")
            # the chroot resolves names with the host's resolver (bind-mounted over this)
            (staging / "etc/resolv.conf").unlink(missing_ok=True)
            (staging / "etc/resolv.conf").touch()
            # what Debian's installer writes and debootstrap does not: localhost resolves
            (staging / "etc/hosts").write_text(ETC_HOSTS)
            (staging / STAMP).write_text(f"{SUITE} {mirror} {' '.join(PACKAGES)} "
                                         f"{_STAMP_MARK}\n")
            staging.rename(tree)
        except BaseException:
            _remove_tree(staging)
            raise
    return tree


#: the last word of the stamp of a tree that has the /etc/hosts above
_STAMP_MARK = "/etc/hosts"


def _debootstrap(staging: Path, cache_dir: Path) -> str:
    """debootstrap the suite into ``staging`` from the first of MIRRORS that has it; the
    mirror used."""
    said = []
    for mirror in MIRRORS:
        # debootstrap mounts /proc and /sys inside the target while it installs: in a
        # mount namespace of its own those mounts cannot outlive it.
        proc = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "--",
             "debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
             SUITE, str(staging), mirror],
            capture_output=True, text=True, timeout=1800, check=False)
        if proc.returncode == 0:
            return mirror
        said.append(f"from {mirror}: exit {proc.returncode}: "
                    f"{(proc.stdout + proc.stderr).strip()[-1000:]}")
        # a fresh target for the next mirror (nothing is mounted in it: see above)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    raise LabError(f"debootstrap {SUITE} failed " + " | ".join(said))


def _finished(tree: Path) -> bool:
    """The tree is complete (its stamp written last) and has every package of PACKAGES
    (a tree built from a shorter list is built again)."""
    try:
        stamp = (tree / STAMP).read_text()
        status = (tree / "var/lib/dpkg/status").read_text()
    except OSError:
        return False
    installed = {block.split("\n", 1)[0].removeprefix("Package: ")
                 for block in status.split("\n\n")
                 if "\nStatus: install ok installed" in block}
    return stamp.rstrip().endswith(_STAMP_MARK) and set(PACKAGES) <= installed


def _remove_tree(path: Path) -> None:
    """Remove a (possibly half-built) tree, refusing if anything is mounted inside it."""
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = line.split()[4]
            if point == real or point.startswith(real + "/"):
                raise LabError(f"{point} is still mounted inside {path}: unmount it, then "
                               f"remove {path}")
    shutil.rmtree(path, ignore_errors=True)


# Runs as root in the new mount namespace; the paths come as arguments, never in the text.
_CHROOT_SCRIPT = r"""
set -eu
tree=$1; shift
mount --bind "$tree" "$tree"
mount -o remount,bind,ro "$tree"
mount -t proc proc "$tree/proc"
mount -t tmpfs -o mode=1777 tmpfs "$tree/tmp"
mount --bind /etc/resolv.conf "$tree/etc/resolv.conf"
while [ "$1" != "--" ]; do
    source=$1 target=$2 mode=$3; shift 3
    mount --bind "$source" "$tree$target"
    if [ "$mode" = ro ]; then mount -o remount,bind,ro "$tree$target"; fi
done
shift
exec chroot "$tree" "$@"
"""


def run_in_tree(tree: Path, argv: Sequence[str], *,
                binds: Sequence[tuple[Path, str, bool]] = (),
                env: Mapping[str, str] | None = None, own_pids: bool = True,
                timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` chrooted into ``tree``; ``binds`` are (host path, path in the tree,
    writable) and each path in the tree must already exist there (see ``mount_point``).

    With ``own_pids`` (the default) it runs in a PID namespace of its own: when ``argv``
    ends, or is killed (the timeout), every process it started ends too, and nothing keeps
    the mount namespace alive. ``own_pids=False`` lets a daemon it starts outlive it (the
    caller stops that one).
    """
    bind_args: list[str] = []
    for source, target, writable in binds:
        if not (tree / target.lstrip("/")).exists():
            raise LabError(f"no mount point {target} in {tree}: mount_point() makes one")
        bind_args += [str(source), target, "rw" if writable else "ro"]
    base_env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8",
                "HOME": "/tmp"}
    pids = ["--pid", "--fork", "--kill-child", "--mount-proc"] if own_pids else []
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", *pids, "--",
         "sh", "-c", _CHROOT_SCRIPT, "bullseye-chroot", str(tree), *bind_args, "--",
         *argv],
        env={**base_env, **(env or {})}, capture_output=True, text=True, timeout=timeout,
        check=False)


def mount_point(tree: Path, name: str, *, file: bool = False) -> str:
    """An empty directory (or file) /NAME in the tree for a bind mount (the tree is
    read-only while a script runs, so mount points are made beforehand, once)."""
    path = tree / name
    if file:
        path.touch(exist_ok=True)
    else:
        path.mkdir(exist_ok=True)
    return f"/{name}"


def main() -> None:
    """Build the tree if needed and say how long that took and which Python it has."""
    started = time.monotonic()
    tree = bullseye_tree()
    elapsed = time.monotonic() - started
    proc = run_in_tree(tree, ["python3", "--version"])
    print(f"{tree}: {proc.stdout.strip() or proc.stderr.strip()} (ready in {elapsed:.1f} s)")
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
