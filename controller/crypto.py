"""Secrets at rest: Fernet (AES-128-CBC + HMAC-SHA256) under a key derived from
``RELAYFLEET_SECRET_KEY``; and the HMAC that signs job callbacks."""

from __future__ import annotations

import base64
import hashlib
import hmac

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.errors import ConfigError


def derive_key(secret_key: str, purpose: str) -> bytes:
    """32 bytes for one purpose from the controller's secret key (HKDF-SHA256)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"relayfleet",
                info=purpose.encode())
    return hkdf.derive(secret_key.encode())


class SecretBox:
    """Encrypts and decrypts stored secrets; the plain text never leaves the worker."""

    def __init__(self, secret_key: str) -> None:
        self._fernet = Fernet(base64.urlsafe_b64encode(derive_key(secret_key, "secrets v1")))

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
                              "not the key it was stored with") from None


def sign_callback(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` over ``timestamp.body`` (the receiver recomputes and compares)."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()
