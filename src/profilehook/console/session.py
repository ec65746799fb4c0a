"""Console sessions and CSRF tokens, stateless: a signed cookie names the key (by its hash)
and when it was signed in; the key is looked up on every request, so a revoked key ends its
sessions on the next request, and a session ends after ``CONSOLE_SESSION_S`` whatever happens.

The signing secret is ``PROFILEHOOK_CONSOLE_SECRET`` when set (scaled out: give every serve
process the same one), else a random one kept in ``data_dir/console-secret`` (mode 0600).
A CSRF token is an HMAC of the session's own nonce: a form rendered for one session is useless
to another. Before sign-in, the login form carries a token bound to the time it was issued.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import msgspec

from profilehook.constants import CONSOLE_SESSION_S
from profilehook.settings import Settings

log = logging.getLogger(__name__)

COOKIE = "profilehook_session"
SECRET_FILE = "console-secret"
LOGIN_FORM_S = 3600  # a login form's token is good this long


@dataclass(frozen=True)
class Session:
    key_hash: str
    signed_in_s: int
    nonce: str


class _Payload(msgspec.Struct, array_like=True):
    key_hash: str
    signed_in_s: int
    nonce: str


class Sessions:
    """Issues and checks session cookies and CSRF tokens with one secret."""

    def __init__(self, secret: bytes, lifetime_s: int = CONSOLE_SESSION_S):
        self._secret = secret
        self.lifetime_s = lifetime_s

    @classmethod
    def from_settings(cls, settings: Settings) -> Sessions:
        return cls(secret_of(settings))

    def issue(self, key_hash: str, now_s: int) -> str:
        """A cookie value for a sign-in with the key of ``key_hash`` at ``now_s``."""
        payload = msgspec.json.encode(_Payload(key_hash, now_s, secrets.token_urlsafe(16)))
        return f"{_b64(payload)}.{_b64(self._mac(b'session', payload))}"

    def read(self, value: str | None, now_s: int) -> Session | None:
        """The session a cookie value holds; None when forged, malformed or expired."""
        if not value or value.count(".") != 1:
            return None
        encoded, mac = value.split(".")
        try:
            payload = _unb64(encoded)
            if not hmac.compare_digest(_unb64(mac), self._mac(b"session", payload)):
                return None
            decoded = msgspec.json.decode(payload, type=_Payload)
        except (ValueError, msgspec.DecodeError):
            return None
        if not 0 <= now_s - decoded.signed_in_s < self.lifetime_s:
            return None
        return Session(decoded.key_hash, decoded.signed_in_s, decoded.nonce)

    def csrf_token(self, session: Session) -> str:
        return _b64(self._mac(b"csrf", session.nonce.encode()))

    def csrf_valid(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(
            (token or "").encode(), self.csrf_token(session).encode()
        )

    def login_token(self, now_s: int) -> str:
        stamp = str(now_s).encode()
        return f"{stamp.decode()}.{_b64(self._mac(b'login', stamp))}"

    def login_token_valid(self, token: str | None, now_s: int) -> bool:
        if not token or token.count(".") != 1:
            return False
        stamp, mac = token.split(".")
        if not stamp.isdigit() or not 0 <= now_s - int(stamp) < LOGIN_FORM_S:
            return False
        try:
            return hmac.compare_digest(_unb64(mac), self._mac(b"login", stamp.encode()))
        except ValueError:
            return False

    def _mac(self, purpose: bytes, message: bytes) -> bytes:
        return hmac.new(self._secret, purpose + b"\0" + message, hashlib.sha256).digest()


def secret_of(settings: Settings) -> bytes:
    """The signing secret (see the module's docstring)."""
    if settings.console_secret:
        return settings.console_secret.encode()
    path = Path(settings.data_dir) / SECRET_FILE
    try:
        return _kept_secret(path)
    except OSError as exc:
        # Sessions then last as long as this process: better than no console.
        log.warning("console sessions are signed with a per-process secret (%s: %s)", path, exc)
        return secrets.token_bytes(32)


def _kept_secret(path: Path) -> bytes:
    try:
        kept = path.read_bytes()
    except FileNotFoundError:
        kept = b""
    if kept:
        return kept
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole beside it, then linked into place: a process that starts at the same
    # moment reads either no file or the whole secret, and both end up with the same one.
    draft = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(secrets.token_hex(32).encode())
        out.flush()
        os.fsync(out.fileno())
    try:
        os.link(draft, path)
    except FileExistsError:
        pass
    finally:
        draft.unlink(missing_ok=True)
    return path.read_bytes()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError("not base64") from exc
