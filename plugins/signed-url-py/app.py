"""signed-url: admit a WebSocket handshake only with a valid, unexpired URL signature.

A backend that hands out WebSocket URLs signs them:

    /ws/feed?room=42&expires=1767225600&kid=k1&sig=<base64url HMAC-SHA256>

where the signature covers the path and every query parameter before `sig`, exactly as
sent (``/ws/feed?room=42&expires=1767225600&kid=k1``), with the key `kid` names in the
plugin's config. The plugin checks the key, the signature (in constant time) and the
expiry, strips `kid` and `sig` from the upstream request, and logs which key signed it.

Built with componentize-py against airlock's WIT; see README.md.
"""

import base64
import hashlib
import hmac
import json
import traceback

# componentize-py bundles the modules imported when the plugin is built, no others:
# `hmac` imports `warnings` only when it is called, so import it here.
import warnings  # noqa: F401

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, types

KEYS: dict[str, bytes] = {}
MAX_TTL = 3600
LEEWAY = 30


def reject(status: int, message: str) -> types.Verdict:
    return types.Verdict_Reject(
        types.Rejection(status, message + "\n", [("content-type", "text/plain")])
    )


def check(path: str, query: str | None, now: int) -> tuple[str, str] | types.Verdict:
    """The key id and the query to forward, or the rejection."""
    if not query or "&sig=" not in "&" + query:
        return reject(401, "a signed URL is required")
    signed, _, sig = query.rpartition("sig=")
    if signed and not signed.endswith("&"):
        return reject(401, "a signed URL is required")
    signed = signed.removesuffix("&")
    params = dict(p.partition("=")[::2] for p in signed.split("&") if p)
    key = KEYS.get(params.get("kid", ""))
    if key is None:
        return reject(403, "unknown signing key")
    message = f"{path}?{signed}".encode()
    expected = hmac.new(key, message, hashlib.sha256).digest()
    try:
        given = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    except ValueError:
        return reject(403, "bad signature")
    if not hmac.compare_digest(expected, given):
        return reject(403, "bad signature")
    try:
        expires = int(params.get("expires", ""))
    except ValueError:
        return reject(403, "the signed URL has no expiry")
    if expires + LEEWAY < now:
        return reject(403, "the signed URL has expired")
    if expires - now > MAX_TTL + LEEWAY:
        return reject(403, "the signed URL expires too far ahead")
    forwarded = "&".join(p for p in signed.split("&") if not p.startswith("kid="))
    return params["kid"], forwarded


class WitWorld(wit_world.WitWorld):
    def configure(self, config: str) -> None:
        global MAX_TTL
        settings = json.loads(config)
        keys = settings.get("keys")
        if not isinstance(keys, dict) or not keys:
            raise Err('config.keys must be a table of key id = "secret"')
        for kid, secret in keys.items():
            if not isinstance(secret, str) or len(secret) < 32:
                raise Err(f"config.keys.{kid} must be a secret of at least 32 characters")
            KEYS[kid] = secret.encode()
        MAX_TTL = int(settings.get("max_ttl_seconds", MAX_TTL))

    def on_handshake(self, request: types.Request) -> types.Verdict:
        try:
            return self.decide(request)
        except Exception:
            # airlock answers the request with the plugin's `on_error`; the traceback
            # goes to airlock's log (a plugin has no stderr).
            host.log(host.Level.ERROR, traceback.format_exc())
            raise

    def decide(self, request: types.Request) -> types.Verdict:
        now = host.now_unix_ms() // 1000
        outcome = check(request.path(), request.query(), now)
        if not isinstance(outcome, tuple):
            return outcome
        kid, forwarded = outcome
        return types.Verdict_Allow(
            types.Mutations(
                path=None,
                query=forwarded,
                set_headers=[],
                remove_headers=[],
                upstream=None,
                affinity_key=None,
                limit_key=None,
                subprotocol=None,
                response_headers=[],
                attributes=[("signed_by", kid)],
            )
        )
