"""A Python plugin that misbehaves on purpose, for airlock's own tests
(tests/e2e/plugin_languages.rs). The request's `x-misbehave` header says how:

    loop   run forever (the call's deadline stops it)
    alloc  allocate without bound (the instance's memory cap stops it)
    raise  raise an exception
    print  print to stdout (a plugin has none: the call fails)

Anything else is allowed unchanged. Built with plugins/signed-url-py's componentize-py.
"""

import wit_world
from wit_world.imports import types


class WitWorld(wit_world.WitWorld):
    def configure(self, config: str) -> None:
        pass

    def on_handshake(self, request: types.Request) -> types.Verdict:
        mode = request.header("x-misbehave")
        if mode == "loop":
            while True:
                pass
        if mode == "alloc":
            kept = []
            while True:
                kept.append(bytearray(1 << 20))
        if mode == "raise":
            raise RuntimeError("raised on purpose")
        if mode == "print":
            print("printed on purpose")
        return types.Verdict_Allow(
            types.Mutations(None, None, [], [], None, None, None, None, [], [])
        )
