"""A FAKE Kubernetes API server for the TrainJob launcher tests - not Kubernetes.

No real API server can run on the test machines, so this one speaks just enough of the Kubernetes REST
protocol for `kubernetes.client.CustomObjectsApi` (create / get / delete of namespaced custom objects) on
127.0.0.1, stores objects in memory, and moves a job through the statuses a test scripts (as the Trainer
controller would). By itself it checks nothing a real API server would (no schema, admission, RBAC); a test
passes `admit` to play that part on a create (tests/pipelines/trainer_crd.py plays the Trainer CRDs and webhook).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PATH = re.compile(
    r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/?]+)"
    r"(?:/(?P<name>[^/?]+))?"
)


class FakeApiServer:
    """`statuses`: the `status` the job reports on successive GETs (the last one repeats). `admit(body, query)`:
    the object to store for a create (query: the request's query parameters), or raise an exception carrying
    `code`, `reason` and `message`, answered as the API server's Status."""

    def __init__(self, statuses: list[dict] | None = None, admit: Callable[[dict, dict], dict] | None = None):
        self.objects: dict[tuple, dict] = {}
        self.queries: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        self.statuses = list(statuses or [{}])
        self.gets = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _reply(self, code: int, obj: dict):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str, message: str):
                self._reply(
                    code,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "code": code,
                        "reason": reason,
                        "message": message,
                    },
                )

            def _route(self):
                fake.requests.append((self.command, self.path))
                m = PATH.match(self.path)
                if not m:
                    self._status(404, "NotFound", self.path)
                    return None
                return m

            def do_POST(self):
                if (m := self._route()) is None:
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                query = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}
                fake.queries.append(query)
                key = (m["group"], m["ns"], m["plural"], body["metadata"]["name"])
                if key in fake.objects:
                    self._status(409, "AlreadyExists", f"{key[-1]} already exists")
                    return
                if admit is not None:
                    try:
                        body = admit(body, query)
                    except Exception as e:  # the refusal a real API server would answer
                        if not hasattr(e, "code"):
                            raise
                        self._status(e.code, e.reason, e.message)
                        return
                body["metadata"]["namespace"] = m["ns"]
                fake.objects[key] = body
                self._reply(201, body)

            def do_GET(self):
                if (m := self._route()) is None:
                    return
                key = (m["group"], m["ns"], m["plural"], m["name"])
                if key not in fake.objects:
                    self._status(404, "NotFound", f"{m['name']} not found")
                    return
                fake.objects[key]["status"] = fake.statuses[min(fake.gets, len(fake.statuses) - 1)]
                fake.gets += 1
                self._reply(200, fake.objects[key])

            def do_DELETE(self):
                if (m := self._route()) is None:
                    return
                key = (m["group"], m["ns"], m["plural"], m["name"])
                if fake.objects.pop(key, None) is None:
                    self._status(404, "NotFound", f"{m['name']} not found")
                    return
                self._reply(200, {"kind": "Status", "status": "Success"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def client(self):
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        return client.CustomObjectsApi(client.ApiClient(cfg))


def finished(kind: str, reason: str = "", message: str = "") -> dict:
    return {
        "conditions": [
            {
                "type": kind,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ]
    }
