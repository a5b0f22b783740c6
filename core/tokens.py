"""Credentials: `<key_id>.<secret>` strings. Only SHA-256 of the secret is stored; the
secrets are 256-bit random, so a slow password hash would add nothing but latency."""
import hashlib
import hmac
import secrets
from dataclasses import dataclass


@dataclass(frozen=True)
class IssuedToken:
    key_id: str
    secret_hash: str
    token: str  # shown once, never stored


def issue_token(prefix: str) -> IssuedToken:
    key_id = f"{prefix}{secrets.token_hex(6)}"
    secret = secrets.token_urlsafe(32)
    return IssuedToken(key_id=key_id, secret_hash=hash_secret(secret), token=f"{key_id}.{secret}")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_token(token: str) -> tuple[str, str] | None:
    key_id, sep, secret = token.strip().partition(".")
    if not sep or not key_id or not secret or len(token) > 200:
        return None
    return key_id, secret


def secret_matches(secret: str, secret_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), secret_hash)
