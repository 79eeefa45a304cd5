"""API key authentication: `Authorization: Bearer sk-...`, looked up by its hash in the store.

The secret is never logged or echoed; an unknown and a revoked key get the same answer.
"""

from __future__ import annotations

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .errors import InvalidApiKey, MissingApiKey
from .store import ApiKey, Store
from .store.keys import PREFIX

_MAX_SECRET = 256  # far above a real secret's length; nothing longer is hashed and looked up
bearer = HTTPBearer(auto_error=False, scheme_name="ApiKey", description="An API key: `Authorization: Bearer sk-...`")


class Authenticator:
    """The caller's live key, or 401: a FastAPI dependency, or called with `await bearer(request)`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def __call__(self, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> ApiKey:
        if credentials is None:
            raise MissingApiKey("send an API key as 'Authorization: Bearer sk-...'")
        secret = credentials.credentials
        key = None
        if secret.startswith(PREFIX) and len(secret) <= _MAX_SECRET:
            key = await self.store.key_by_secret(secret)
        if key is None:
            raise InvalidApiKey("this API key is unknown or revoked; ask an administrator for a valid one")
        return key
