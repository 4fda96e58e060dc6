"""Bearer-token authentication: ``DATA_DIR/tokens.json`` maps token -> user name.

Minimal version for the review router; ``diffuseg serve`` owns token generation. Tokens are
compared in constant time (hmac.compare_digest) against every stored token.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path

from fastapi import HTTPException, Request

TOKENS_FILE = "tokens.json"
ANONYMOUS = "anonymous"  # the user when the service runs with --no-auth


def load_tokens(data_dir: str | Path) -> dict[str, str]:
    path = Path(data_dir) / TOKENS_FILE
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def user_for(token: str, tokens: dict[str, str]) -> str | None:
    found = None
    for known, user in tokens.items():
        if hmac.compare_digest(known.encode(), token.encode()):
            found = user
    return found


def current_user(request: Request) -> str:
    """FastAPI dependency: the user of the request's Bearer token (401 without a valid one)."""
    settings = request.app.state.settings
    if not settings.auth:
        return ANONYMOUS
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    user = user_for(token.strip(), load_tokens(settings.data_dir)) if (
        scheme.lower() == "bearer" and token.strip()) else None
    if user is None:
        raise HTTPException(401, "missing or invalid token; send 'Authorization: Bearer TOKEN'",
                            headers={"WWW-Authenticate": "Bearer"})
    return user
