"""An OTLP/HTTP trace receiver for the tests, decoding with the OpenTelemetry project's
own protobuf definitions (the `opentelemetry-proto` package), not airlock's types.

    otlp_receiver.py MODE      MODE: ok | fail (500 to every export) | hang (never answers)

Prints `{"port": N}` once listening, then per export a line
`{"export": {"path", "content_type", "headers", "resource", "spans": [...]}}`.
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

MODE = sys.argv[1] if len(sys.argv) > 1 else "ok"
LOCK = threading.Lock()


def value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def attributes(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def span(s):
    return {
        "trace_id": s.trace_id.hex(),
        "span_id": s.span_id.hex(),
        "parent_span_id": s.parent_span_id.hex(),
        "trace_state": s.trace_state,
        "name": s.name,
        "kind": s.kind,
        "start": s.start_time_unix_nano,
        "end": s.end_time_unix_nano,
        "attributes": attributes(s.attributes),
        "events": [{"name": e.name, "attributes": attributes(e.attributes)} for e in s.events],
        "status": {"code": s.status.code, "message": s.status.message},
    }


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if MODE == "hang":
            time.sleep(3600)
            return
        if MODE == "fail":
            self.send_response(500)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans, resource = [], {}
        for rs in request.resource_spans:
            resource = attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                spans.extend(span(s) for s in ss.spans)
        record = {
            "export": {
                "path": self.path,
                "content_type": self.headers.get("content-type"),
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "resource": resource,
                "spans": spans,
            }
        }
        with LOCK:
            print(json.dumps(record), flush=True)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(json.dumps({"port": server.server_address[1]}), flush=True)
server.serve_forever()
