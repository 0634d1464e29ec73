"""The same algorithm in grand-challenge's invoke mode: a web server started once.

The image carries the label ``org.grand-challenge.api-method=invoke``; the runtime starts this
server, waits for ``GET /health`` on 127.0.0.1:4743, stages each task's inputs in ``/input``
and calls ``POST /invoke``; 201 means the outputs are in ``/output``. The model is loaded once,
at start, and serves every task.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from http.server import BaseHTTPRequestHandler, HTTPServer

import inference

MODEL = inference.load_model()
STATE = {"invocations": 0, "model_loads": 1, "server_pid": os.getpid()}


class Handler(BaseHTTPRequestHandler):
    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._reply(200, {"status": "ok"})
        else:
            self._reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        if self.path != "/invoke":
            self._reply(404, {"error": "not found"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        STATE["invocations"] += 1
        try:
            results = inference.run(MODEL)
        except Exception:
            traceback.print_exc()
            self._reply(500, {"error": "inference failed"})
            return
        # Evidence that one server, with one model load, served this task.
        (inference.OUTPUT_PATH / "results.json").write_text(json.dumps({**results, **STATE}))
        self._reply(201, {"status": "done"})

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(format % args + "\n")


if __name__ == "__main__":
    print(f"model loaded: {MODEL}", flush=True)
    HTTPServer(("127.0.0.1", 4743), Handler).serve_forever()
