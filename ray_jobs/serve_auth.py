"""The bearer token of ``etva serve`` / the RayService: where it comes from, how a request proves it.

Where the token comes from (never from the environment some other process started with, never on a
command line, never logged):

- ``etva serve`` reads it in the user's own shell (``--token-file``, a file only its owner can read, or
  ``$ETVA_SERVE_TOKEN``) and hands it to :func:`ray_jobs.serve_app.build_app` as a Python argument;
- a RayService's application config names the environment variable that holds it
  (``args.token_env: ETVA_SERVE_TOKEN``), which the manifest fills from a Kubernetes Secret in the pods.

Only the token's SHA-256 reaches the replicas (a deployment's constructor arguments are kept by the Serve
controller): a replica hashes what a request presents and compares the digests with
:func:`hmac.compare_digest` (constant time).

How a request proves it: ``Authorization: Bearer <token>`` (API clients), or the ``etva_token`` cookie
that ``POST /login`` sets for the search page (HttpOnly, SameSite=Strict, Path=/): ``<img>`` and ``<a>``
cannot send a header, and the cookie keeps the token out of URLs and out of the page's scripts
(docs/serving.md). A token in the URL (``?token=``) is refused: URLs land in access logs and histories.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse

from etva.config.settings import is_loopback

__all__ = [
    "COOKIE",
    "ENV_VARIABLE",
    "TokenError",
    "token_digest",
    "read_token_file",
    "require_token_for",
    "check_request",
    "login_response",
]

COOKIE = "etva_token"
ENV_VARIABLE = "ETVA_SERVE_TOKEN"  # the user's shell (etva serve) or the pods' Secret (RayService token_env)
MIN_TOKEN_CHARS = 16


class TokenError(ValueError):
    """A token that cannot be used (unreadable file, too short, a wide bind without one)."""


def token_digest(token: str) -> str:
    """The hex SHA-256 of ``token`` ('' for no token): what a replica holds instead of the token."""
    return hashlib.sha256(token.encode()).hexdigest() if token else ""


def read_token_file(path: str | os.PathLike) -> str:
    """The token in ``path`` (first line, stripped); the file must be readable by its owner only.

    Raises:
        TokenError: missing, readable by others, empty or shorter than 16 characters.
    """
    p = Path(path).expanduser()
    try:
        mode = p.stat().st_mode
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise TokenError(f"--token-file {path}: {e.strerror}") from e
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenError(
            f"--token-file {path}: readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it"
        )
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    return check_token_value(token, f"--token-file {path}")


def check_token_value(token: str, where: str) -> str:
    """``token`` when it is long enough to be a secret; TokenError naming ``where`` otherwise."""
    if token and len(token) < MIN_TOKEN_CHARS:
        raise TokenError(
            f"{where}: the token has {len(token)} characters, expected at least {MIN_TOKEN_CHARS}"
        )
    return token


def require_token_for(host: str, digest: str, where: str) -> None:
    """Refuse to serve on a non-loopback ``host`` without a token (``where`` names the caller's setting)."""
    if not digest and not is_loopback(host):
        raise TokenError(
            f"{where}: Serve's HTTP host is {host}, not a loopback address, and no token is set "
            "(anyone who reaches it could search and read the indexed videos)"
        )


def _presented(request: Request) -> str:
    """The token a request carries: the Bearer header first, else the page's cookie."""
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else ""
    return request.cookies.get(COOKIE, "")


def _matches(presented: str, digest: str) -> bool:
    return hmac.compare_digest(token_digest(presented).encode(), digest.encode())


def check_request(request: Request, digest: str) -> None:
    """Pass a request that proves the token (none needed when ``digest`` is ''); else a 401."""
    if not digest:
        return
    if "token" in request.query_params:
        raise HTTPException(
            401,
            "a token in the URL is refused (it lands in logs and browser history): send "
            "'Authorization: Bearer <token>' or sign in on the search page",
        )
    presented = _presented(request)
    if not presented or not _matches(presented, digest):
        raise HTTPException(
            401,
            "missing or wrong token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


def login_response(body: object, digest: str, secure: bool) -> JSONResponse:
    """``POST /login {"token": ...}``: a right token gets the page's cookie; a wrong one a 401."""
    if not digest:
        return JSONResponse({"auth": False})
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token or not _matches(token, digest):
        raise HTTPException(401, "wrong token")
    out = JSONResponse({"auth": True})
    out.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=secure, path="/")
    return out
