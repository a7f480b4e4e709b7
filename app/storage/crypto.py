"""Encryption of stored secrets (Fernet: AES-128-CBC + HMAC-SHA256, from ``cryptography``).

The key comes from ``REPROGRAM_SECRET_KEY``: a Fernet key as is, any other string through
SHA-256. In embedded mode without one, a random key is created once in the data directory
(readable by its owner only); production mode refuses to start without the setting.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from app.config.settings import Settings

KEY_FILE = "secret.key"


def _fernet_key(secret: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(secret.encode())
        if len(raw) == 32:
            return secret.encode()
    except (ValueError, TypeError):
        pass
    return base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest())


def _embedded_key(data_dir: Path) -> bytes:
    path = data_dir / KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        key = Fernet.generate_key()
        # O_EXCL: two processes starting together must not write different keys.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_bytes().strip()
        with os.fdopen(fd, "wb") as fh:
            fh.write(key)
        return key
    return path.read_bytes().strip()


class SecretBox:
    def __init__(self, settings: Settings) -> None:
        if settings.secret_key is not None:
            key = _fernet_key(settings.secret_key.get_secret_value())
        else:
            key = _embedded_key(settings.data_dir)
        self._fernet = Fernet(key)

    def seal(self, secret: str) -> bytes:
        return self._fernet.encrypt(secret.encode())

    def open(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(token).decode()
        except InvalidToken as err:
            raise ValueError("a stored credential does not decrypt with this server key") from err

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"
