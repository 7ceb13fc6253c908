"""The lab's certificate authority: relays' server certificates and what lab hosts trust.

One CA per lab, made with openssl in the lab's work directory (``DIR/ca.crt``, ``ca.key``:
EC P-256, ``CA:TRUE`` and ``keyCertSign``). :meth:`LabCA.issue` signs server certificates
naming DNS names (subjectAltName, ``serverAuth``). :meth:`LabCA.trust_dir` is a copy of
the machine's ``/etc/ssl/certs`` (its symlinks kept) with the lab CA added under its
subject-hash name and appended to ``ca-certificates.crt``: bound over ``/etc/ssl/certs``
inside a lab host, both the default bundle and OpenSSL's hashed directory trust the lab CA,
while the machine's own ``/etc/ssl`` is never written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

#: the machine's CA directory and bundle (Debian's ca-certificates)
SYSTEM_CERTS = Path("/etc/ssl/certs")
SYSTEM_BUNDLE = SYSTEM_CERTS / "ca-certificates.crt"
#: the lab CA's file name in a trust directory
CA_FILE_NAME = "relayfleet-lab-ca.pem"
_EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


class LabCAError(RuntimeError):
    """openssl could not make a lab certificate."""


def _openssl(*args: str, cwd: Path | None = None) -> bytes:
    proc = subprocess.run(["openssl", *args], capture_output=True, check=False, timeout=60,
                          cwd=cwd)
    if proc.returncode != 0:
        raise LabCAError(f"openssl {' '.join(args[:2])} exited {proc.returncode}: "
                         f"{proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


class LabCA:
    """A certificate authority living in ``directory`` (created on first use, then reused)."""

    def __init__(self, directory: Path, name: str = "relayfleet lab CA") -> None:
        self.directory = directory
        self.cert = directory / "ca.crt"
        self.key = directory / "ca.key"
        self._lock = threading.Lock()
        directory.mkdir(parents=True, exist_ok=True)
        if not (self.cert.exists() and self.key.exists()):
            self._create(name)

    def _create(self, name: str) -> None:
        key = self.directory / "ca.key.new"
        _openssl("req", "-x509", *_EC_KEY, "-keyout", str(key), "-out", str(self.cert),
                 "-days", "30", "-subj", f"/O=relayfleet lab/CN={name}",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                 "-addext", "subjectKeyIdentifier=hash")
        key.chmod(0o600)
        key.rename(self.key)
        self.cert.chmod(0o644)

    def issue(self, name: str, dns_names: Sequence[str], days: int = 30) -> tuple[Path, Path]:
        """Sign a server certificate for ``dns_names`` (the first is also its CN); return the
        certificate and key files, ``DIR/certs/NAME.crt`` and ``NAME.key``."""
        if not dns_names:
            raise LabCAError("a server certificate needs at least one DNS name")
        certs = self.directory / "certs"
        certs.mkdir(exist_ok=True)
        cert, key = certs / f"{name}.crt", certs / f"{name}.key"
        extensions = certs / f"{name}.ext"
        extensions.write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid\n"
            f"subjectAltName={','.join(f'DNS:{n}' for n in dns_names)}\n")
        request = _openssl("req", "-new", *_EC_KEY, "-keyout", str(key),
                           "-subj", f"/CN={dns_names[0]}")
        proc = subprocess.run(
            ["openssl", "x509", "-req", "-CA", str(self.cert), "-CAkey", str(self.key),
             "-set_serial", f"0x{os.urandom(16).hex()}", "-days", str(days),
             "-extfile", str(extensions), "-out", str(cert)],
            input=request, capture_output=True, check=False, timeout=60)
        if proc.returncode != 0:
            raise LabCAError(f"openssl x509 -req exited {proc.returncode}: "
                             f"{proc.stderr.decode(errors='replace').strip()}")
        key.chmod(0o600)
        return cert, key

    def trust_dir(self) -> Path:
        """``DIR/trust``: the machine's /etc/ssl/certs plus the lab CA (built once)."""
        trust = self.directory / "trust"
        with self._lock:
            if (trust / CA_FILE_NAME).exists():
                return trust
            staging = self.directory / "trust.new"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(SYSTEM_CERTS, staging, symlinks=True)
            shutil.copy(self.cert, staging / CA_FILE_NAME)
            subject_hash = _openssl("x509", "-noout", "-subject_hash", "-in",
                                    str(self.cert)).decode().strip()
            suffix = 0
            while (staging / f"{subject_hash}.{suffix}").is_symlink():
                suffix += 1
            (staging / f"{subject_hash}.{suffix}").symlink_to(CA_FILE_NAME)
            ca_pem = self.cert.read_text()
            system = SYSTEM_BUNDLE.read_text() if SYSTEM_BUNDLE.exists() else ""
            bundle = staging / SYSTEM_BUNDLE.name
            bundle.unlink(missing_ok=True)  # never write through a link to the machine's file
            bundle.write_text(system + ("" if system.endswith("\n") or not system else "\n")
                              + ca_pem)
            staging.chmod(0o755)
            shutil.rmtree(trust, ignore_errors=True)  # a half-built one
            staging.rename(trust)
        return trust

    @property
    def bundle(self) -> Path:
        """The system bundle plus the lab CA, as a file in the root namespace."""
        return self.trust_dir() / SYSTEM_BUNDLE.name
