"""API keys for the HTTP API (echo.api): made, checked and revoked here; only their digests are kept.

A key is "ek_" and 43 random URL-safe characters (32 bytes). The database holds its first
characters (the prefix, to tell keys apart in the admin and in log lines) and the SHA-256 of the
whole key: keys are long and random, so a fast hash is enough, and a stolen table gives no key.
"""

import hashlib
import hmac
import secrets
from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q, QuerySet
from django.utils import timezone

from echo.models import ApiKey

KEY_START = "ek_"
KEY_BYTES = 32
# "ek_" and 43 characters of token_urlsafe(32).
KEY_LENGTH = len(KEY_START) + 43
PREFIX_LENGTH = len(KEY_START) + 8
# last_used_at is written at most this often per key: a busy key costs no write per request.
TOUCH_EVERY = timedelta(minutes=1)


class KeyRefused(ValueError):
    """A key that does not open the API: missing, malformed, unknown or revoked."""


def digest_of(key: str) -> str:
    """Return the SHA-256 hex digest of ``key``: what the database keeps."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def new_key() -> tuple[str, str, str]:
    """Return a new random key, its prefix and its digest."""
    key = KEY_START + secrets.token_urlsafe(KEY_BYTES)
    return key, key[:PREFIX_LENGTH], digest_of(key)


def create(
    *, name: str, permission: str = ApiKey.PUBLISH, created_by: AbstractBaseUser | None = None
) -> tuple[ApiKey, str]:
    """Make and save a key; return (the ApiKey, the key itself). The key is never stored: show it now."""
    key, prefix, digest = new_key()
    record = ApiKey.objects.create(
        name=name, permission=permission, prefix=prefix, digest=digest, created_by=created_by
    )
    return record, key


def fill(record: ApiKey) -> str:
    """Give an unsaved ``record`` (the admin's form) a new key's prefix and digest; return the key."""
    key, record.prefix, record.digest = new_key()
    return key


def verify(key: str) -> ApiKey:
    """Return the live ApiKey whose key is ``key``, or raise KeyRefused saying why not.

    Candidates are found by prefix, and the digest is compared in constant time. A key in use has
    its ``last_used_at`` set, at most once every TOUCH_EVERY.
    """
    if not (key.startswith(KEY_START) and len(key) == KEY_LENGTH and key.isascii()):
        raise KeyRefused("this is not an API key: keys start with 'ek_' and are 46 characters long")
    digest = digest_of(key)
    found = None
    for candidate in ApiKey.objects.filter(prefix=key[:PREFIX_LENGTH]):
        if hmac.compare_digest(candidate.digest, digest):
            found = candidate
    if found is None:
        raise KeyRefused("unknown API key")
    if found.revoked_at is not None:
        raise KeyRefused(
            f"this API key ({found.prefix}...) was revoked on {found.revoked_at:%Y-%m-%d %H:%M} UTC"
        )
    touch(found)
    return found


def touch(record: ApiKey) -> None:
    """Note that ``record`` was used now, unless that was noted less than TOUCH_EVERY ago."""
    now = timezone.now()
    if record.last_used_at is not None and now - record.last_used_at < TOUCH_EVERY:
        return
    stale = Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - TOUCH_EVERY)
    ApiKey.objects.filter(stale, pk=record.pk).update(last_used_at=now)
    record.last_used_at = now


def revoke(keys: QuerySet[ApiKey]) -> int:
    """Revoke the keys of ``keys`` not revoked yet; return how many were."""
    return keys.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
