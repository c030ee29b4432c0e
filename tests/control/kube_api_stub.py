"""A stand-in for a Kubernetes API server, on a local port, for the manager's wire
calls where no cluster is at hand.

It records every request (method, path, query, content type, JSON body), answers
applies with their body, deletes and reads of what was applied, a pod list, and
a pod watch that streams whatever the test :meth:`KubeApiStub.push` es.  It checks
nothing a real API server checks: that is test_kubernetes_cluster.py's job.
"""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any
    authorization: str


class KubeApiStub:
    """Serve on ``127.0.0.1:<port>`` until :meth:`close`."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.objects: dict[str, Any] = {}  # path -> last applied body
        self.pods: list[dict[str, Any]] = []  # what a list returns
        self._events: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # a watch streams chunks, as a real one does

            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self) -> Request:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                request = Request(
                    self.command,
                    url.path,
                    {k: v[0] for k, v in parse_qs(url.query).items()},
                    self.headers.get("Content-Type", ""),
                    json.loads(raw) if raw else None,
                    self.headers.get("Authorization", ""),
                )
                stub.requests.append(request)
                return request

            def do_PATCH(self) -> None:
                request = self._record()
                stub.objects[request.path] = request.body
                self._reply(200, request.body)

            def do_DELETE(self) -> None:
                request = self._record()
                found = stub.objects.pop(request.path, None) is not None
                if found or request.path.split("/")[-2] == "pods":
                    self._reply(200, {"kind": "Status", "status": "Success"})
                else:
                    self._reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"})

            def do_GET(self) -> None:
                request = self._record()
                if request.path.endswith("/pods") and request.query.get("watch") == "true":
                    self._watch()
                elif request.path.endswith("/pods"):
                    self._reply(
                        200,
                        {
                            "kind": "PodList",
                            "apiVersion": "v1",
                            "metadata": {"resourceVersion": "10"},
                            "items": stub.pods,
                        },
                    )
                elif request.path in stub.objects:
                    self._reply(200, stub.objects[request.path])
                else:
                    self._reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"})

            def _watch(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                while True:
                    item = stub._events.get()
                    if item is None:
                        self.wfile.write(b"0\r\n\r\n")
                        self.close_connection = True
                        return
                    kind, obj = item
                    line = json.dumps({"type": kind, "object": obj}).encode() + b"\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def push(self, kind: str, pod: dict[str, Any]) -> None:
        """Send one watch event to the watcher."""
        self._events.put((kind, pod))

    def end_watch(self) -> None:
        """End the current watch request (the manager lists again)."""
        self._events.put(None)

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for this stand-in."""
        return self.api_client_for(self.url)

    @staticmethod
    def api_client_for(url: str) -> Any:
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = url
        return client.ApiClient(configuration)

    def close(self) -> None:
        self.end_watch()
        self._server.shutdown()
        self._server.server_close()
