"""API key secrets: how they are made, checked and hashed.

A secret carries 288 random bits, so a fast hash (SHA-256) cannot be brute-forced and a lookup
by hash costs one indexed query; a slow password hash would only add latency to every call.
"""

from __future__ import annotations

import hashlib
import secrets

PREFIX = "sk-"
MIN_LENGTH = 32


def new_secret() -> str:
    """'sk-' and 48 URL-safe characters (36 random bytes)."""
    return PREFIX + secrets.token_urlsafe(36)


def check_secret(secret: str) -> None:
    """Refuse a supplied secret (a bootstrap key) that is not of the form keys are; never echo it."""
    if not secret.startswith(PREFIX) or len(secret) < MIN_LENGTH:
        raise ValueError(f"an API key secret must start with {PREFIX!r} and be at least {MIN_LENGTH} characters long")


def hash_secret(secret: str) -> str:
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()


def display_prefix(secret: str) -> str:
    """The first 8 characters after 'sk-': enough to tell keys apart in a listing."""
    return secret[len(PREFIX) : len(PREFIX) + 8]
