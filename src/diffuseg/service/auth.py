"""Bearer-token authentication.

Tokens live in ``DATA_DIR/tokens.json`` as ``{token: user name}``, readable by the owner only
(mode 0600). At the first start the file is created with one random token for user ``admin``,
printed once. Add users by editing the file (``python -c 'import secrets;
print(secrets.token_urlsafe(32))'`` makes a token) and restarting. Every presented token is
compared with every stored one in constant time (``hmac.compare_digest``).
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import stat
from pathlib import Path

from fastapi import HTTPException, Request

from diffuseg.errors import ConfigError

TOKEN_FILE = "tokens.json"
ANONYMOUS = "anonymous"  # the user of every request when authentication is off (--no-auth)


def load_tokens(data_dir: Path, *, announce=print) -> dict[str, str]:
    """The token table; created (with one token for 'admin', announced once) when absent."""
    path = data_dir / TOKEN_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({token: "admin"}, f, indent=2)
        announce(f"diffuseg serve: created {path} with a token for user 'admin' (shown once): "
                 f"{token}")
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"'{path}' is readable by others (mode {oct(mode & 0o777)}); run "
                          f"'chmod 600 {path}'")
    try:
        tokens = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"'{path}' is not valid JSON ({err}); fix or delete it") from None
    if not isinstance(tokens, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) >= 16
            for k, v in tokens.items()):
        raise ConfigError(f"'{path}' must map tokens (16+ characters) to user names")
    return tokens


def find_user(tokens: dict[str, str], presented: str) -> str | None:
    """The user of ``presented``; every stored token is compared (constant time each)."""
    user = None
    for token, name in tokens.items():
        if hmac.compare_digest(token.encode(), presented.encode()):
            user = name
    return user


def current_user(request: Request) -> str:
    """FastAPI dependency: the user named by the ``Authorization: Bearer <token>`` header, or
    ANONYMOUS when authentication is off; 401 otherwise."""
    tokens = request.app.state.tokens
    if tokens is None:
        return ANONYMOUS
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    user = find_user(tokens, presented.strip()) if scheme.lower() == "bearer" else None
    if user is None:
        raise HTTPException(401, "missing or wrong token; send 'Authorization: Bearer <token>' "
                            "(see DATA_DIR/tokens.json)", headers={"WWW-Authenticate": "Bearer"})
    return user
