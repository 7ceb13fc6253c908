"""Secrets at rest: Fernet (AES-128-CBC + HMAC-SHA256) under a key derived from
``RELAYFLEET_SECRET_KEY`` (older keys still read, for rotation); and the HMAC that signs
job callbacks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.errors import ConfigError


def derive_key(secret_key: str, purpose: str) -> bytes:
    """32 bytes for one purpose from the controller's secret key (HKDF-SHA256)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"relayfleet",
                info=purpose.encode())
    return hkdf.derive(secret_key.encode())


def _fernet(secret_key: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(derive_key(secret_key, "secrets v1")))


class SecretBox:
    """Encrypts and decrypts stored secrets; the plain text never leaves the worker.

    Secrets are sealed with ``secret_key``; ``old_keys`` (``RELAYFLEET_SECRET_KEY_OLD``)
    still open what was sealed before a key rotation, until :meth:`reseal` (the
    ``rotate-secret-key`` command) has moved every stored secret to the current key.
    """

    def __init__(self, secret_key: str, old_keys: Sequence[str] = ()) -> None:
        self._current = _fernet(secret_key)
        self._fernet = MultiFernet([self._current, *(_fernet(key) for key in old_keys)])

    def seal(self, plain: str | None) -> str | None:
        """Encrypt a secret (``None`` stays ``None``)."""
        if plain is None:
            return None
        return self._fernet.encrypt(plain.encode()).decode("ascii")

    def open(self, sealed: str | None) -> str | None:
        """Decrypt a stored secret."""
        if sealed is None:
            return None
        try:
            return self._fernet.decrypt(sealed.encode("ascii")).decode()
        except InvalidToken:
            raise ConfigError("a stored secret cannot be decrypted: RELAYFLEET_SECRET_KEY is "
                              "not the key it was stored with (after changing it, put the "
                              "old one in RELAYFLEET_SECRET_KEY_OLD)") from None

    def reseal(self, sealed: str) -> str | None:
        """``sealed`` sealed again with the current key, or ``None`` if it already is (so
        that running a rotation twice re-seals nothing the second time)."""
        token = sealed.encode("ascii")
        try:
            self._current.decrypt(token)
            return None
        except InvalidToken:
            pass
        try:
            return self._fernet.rotate(token).decode("ascii")
        except InvalidToken:
            raise ConfigError("a stored secret cannot be decrypted with RELAYFLEET_SECRET_KEY "
                              "or any key in RELAYFLEET_SECRET_KEY_OLD") from None


def new_callback_secret() -> str:
    """A fresh random key for signing one tenant's callbacks."""
    return secrets.token_urlsafe(32)


def sign_callback(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` over ``timestamp.body`` (the receiver recomputes and compares)."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()
