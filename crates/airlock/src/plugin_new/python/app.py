"""{{name}}: an airlock handshake plugin in Python.

airlock calls `configure` once per instance with the plugin's `config` table as JSON,
then `on_handshake` for every request on the routes that list the plugin. Edit
`decide`; `./build.sh` makes {{file}}.wasm, `python3 -m unittest` runs it through
`airlock plugin test`.

componentize-py bundles only the modules imported here, at the top: import what
`decide` needs here, not inside a function.
"""

import json
import traceback

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, types

ALLOWED: set[str] = set()


def decide(request: types.Request) -> types.Verdict:
    """The verdict for one request: admit listed origins, refuse the rest."""
    origin = request.header("origin")
    if origin is None or origin not in ALLOWED:
        return reject(403, "origin not allowed")
    return allow(attributes=[("origin", origin)])


class WitWorld(wit_world.WitWorld):
    def configure(self, config: str) -> None:
        allow_list = json.loads(config).get("allow")
        if not isinstance(allow_list, list) or not all(isinstance(o, str) for o in allow_list):
            # Refuses the configuration: airlock names the plugin and does not start.
            raise Err('config.allow must be a list of origins, like ["https://app.example.com"]')
        ALLOWED.update(allow_list)

    def on_handshake(self, request: types.Request) -> types.Verdict:
        try:
            return decide(request)
        except Exception:
            # airlock answers with the plugin's `on_error`; the traceback goes to its
            # log (a plugin has no stdout or stderr).
            host.log(host.Level.ERROR, traceback.format_exc())
            raise


def allow(**changes) -> types.Verdict:
    """Let the request through, with the changes given (see `mutations` in the WIT)."""
    fields = dict(
        path=None, query=None, set_headers=[], remove_headers=[], upstream=None,
        affinity_key=None, limit_key=None, subprotocol=None, response_headers=[],
        attributes=[],
    )
    fields.update(changes)
    return types.Verdict_Allow(types.Mutations(**fields))


def reject(status: int, message: str) -> types.Verdict:
    """Answer the client with `status` and a text body."""
    return types.Verdict_Reject(
        types.Rejection(status, message + "\n", [("content-type", "text/plain")])
    )
