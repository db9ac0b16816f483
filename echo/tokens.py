"""Signed, expiring tokens that let a client without a session (a script, an app) connect as a user.

A token is ``PAYLOAD.SIGNATURE``: the URL-safe base64 of a small JSON object (the user's pk, the
expiry as a UNIX time, a stamp of the user's password) and an HMAC of it keyed by SECRET_KEY
(``django.core.signing``; SECRET_KEY_FALLBACKS still verify, for key rotation). Every character is
an RFC 7230 token character, so a browser can offer it as a ``Sec-WebSocket-Protocol`` entry.
The stamp makes a password change revoke every token issued before it, as it ends sessions.
Tokens are readable by whoever holds them; they hold nothing secret.
"""

import math
import time
from datetime import UTC, datetime

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.core import signing
from django.utils.crypto import constant_time_compare, salted_hmac

SALT = "echo.tokens"
STAMP_SALT = "echo.tokens.stamp"
# The token's parts are joined with "." (signing's default ":" is not a token character).
SEPARATOR = "."
# Longer than any token issued here: a longer "token" is refused before any work.
MAX_LENGTH = 1000


class InvalidToken(Exception):
    """A token that cannot be used; ``reason`` says why in a few words, never quoting the token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidTTL(ValueError):
    """A lifetime outside 1 .. TOKEN_MAX_TTL seconds, or not a whole number."""


def check_ttl(ttl: object) -> int:
    """Return ``ttl`` as whole seconds (TOKEN_TTL when None), or raise InvalidTTL saying why."""
    if ttl is None:
        return settings.TOKEN_TTL
    if isinstance(ttl, bool) or not isinstance(ttl, int | str):
        raise InvalidTTL(f"ttl must be a whole number of seconds, not {type(ttl).__name__}")
    try:
        seconds = int(ttl)
    except ValueError:
        raise InvalidTTL(f"ttl must be a whole number of seconds, not {str(ttl)[:40]!r}") from None
    if not 1 <= seconds <= settings.TOKEN_MAX_TTL:
        top = settings.TOKEN_MAX_TTL
        raise InvalidTTL(f"ttl must be between 1 and {top} seconds (TOKEN_MAX_TTL), not {seconds}")
    return seconds


def signer() -> signing.Signer:
    return signing.Signer(salt=SALT, sep=SEPARATOR)


def stamp(user: AbstractBaseUser, secret: str) -> str:
    """Return a short keyed digest of the user's pk and password hash."""
    digest = salted_hmac(STAMP_SALT, f"{user.pk}:{user.password}", secret=secret, algorithm="sha256")
    return digest.hexdigest()[:16]


def issue(user: AbstractBaseUser, ttl: object = None) -> tuple[str, datetime]:
    """Return a token for ``user`` that expires in ``ttl`` seconds (at least; TOKEN_TTL when None),
    and its expiry. Raises InvalidTTL for a ttl out of bounds."""
    seconds = check_ttl(ttl)
    # Rounded up to a whole second: a token lives at least as long as asked.
    expires = math.ceil(time.time()) + seconds
    pk = user.pk if isinstance(user.pk, int) else str(user.pk)
    payload = {"u": pk, "e": expires, "s": stamp(user, settings.SECRET_KEY)}
    return signer().sign_object(payload), datetime.fromtimestamp(expires, tz=UTC)


def verify(token: str) -> tuple[AbstractBaseUser, datetime]:
    """Return the user ``token`` was issued to and its expiry; raise InvalidToken if it is malformed,
    forged, expired, or its user is unknown, inactive, or changed password since.

    Reads the user from the database: call it through database_sync_to_async from async code.
    """
    if not isinstance(token, str) or not 0 < len(token) <= MAX_LENGTH or token.count(SEPARATOR) != 1:
        raise InvalidToken("malformed")
    try:
        payload = signer().unsign_object(token)
    except signing.BadSignature:
        raise InvalidToken("bad signature") from None
    except ValueError:  # signed by us, so never seen; kept so nothing odd reaches a caller
        raise InvalidToken("malformed") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("e"), int) or "u" not in payload:
        raise InvalidToken("malformed")
    if payload["e"] <= time.time():
        raise InvalidToken("expired")
    user_model = get_user_model()
    try:
        user = user_model._default_manager.get(pk=payload["u"])
    except (user_model.DoesNotExist, ValueError, TypeError):
        raise InvalidToken("unknown user") from None
    if not user.is_active:
        raise InvalidToken("inactive user")
    keys = [settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS]
    if not any(constant_time_compare(str(payload.get("s")), stamp(user, key)) for key in keys):
        raise InvalidToken("revoked: the user's password changed")
    return user, datetime.fromtimestamp(payload["e"], tz=UTC)
