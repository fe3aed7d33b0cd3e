"""Runs the built plugin through `airlock plugin test` ($AIRLOCK, or `airlock` on PATH)."""

import json
import os
import subprocess
import unittest

CONFIG = json.dumps({"allow": ["https://app.example.com"]})


def verdict(*request: str) -> dict:
    out = subprocess.run(
        [os.environ.get("AIRLOCK", "airlock"), "plugin", "test", "--wasm", "{{file}}.wasm",
         "--config", CONFIG, *request],
        check=True, stdout=subprocess.PIPE, text=True,
    )
    return json.loads(out.stdout)


class PluginTest(unittest.TestCase):
    def test_a_listed_origin_is_admitted(self):
        v = verdict("-H", "Origin: https://app.example.com", "GET", "/ws")
        self.assertEqual(v["verdict"], "allow")
        self.assertEqual(v["attributes"], [["origin", "https://app.example.com"]])

    def test_another_origin_is_refused(self):
        v = verdict("-H", "Origin: https://evil.example", "GET", "/ws")
        self.assertEqual(v["verdict"], "reject")
        self.assertEqual(v["status"], 403)


if __name__ == "__main__":
    unittest.main()
