"""Loopback HTTP plumbing shared by every vendor the sandbox imitates.

Each vendor is a ``VendorApp`` (pure request -> response) served by its own threaded server on
127.0.0.1. The server adds what every vendor shares: the sandbox clock, injected latency and faults
(5xx, 429 with or without retry hints, stalled responses that make clients time out), and two
control endpoints so a sandbox running in another process can be steered:

* ``POST /_sandbox/faults``  JSON ``{"latency_ms": 100, "faults": [{"status": 429, "count": 2,
  "headers": {"Retry-After": "1"}}, {"stall_seconds": 3}]}``; ``DELETE`` clears them.
* ``POST /_sandbox/clock``   JSON ``{"now": <unix seconds>}`` moves the sandbox's "now".

A vendor may add its own control paths (``VendorApp.control``), e.g. Stripe's ``/_sandbox/webhooks``.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

MAX_STALL_SECONDS = 30.0
MAX_LATENCY_MS = 5_000
MAX_BODY_BYTES = 1_048_576


@dataclass
class Request:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self):
        return json.loads(self.body or b"{}")


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload, headers: dict[str, str] | None = None) -> "Response":
        return cls(status, json.dumps(payload, check_circular=False).encode(), {"Content-Type": "application/json", **(headers or {})})


class SandboxClock:
    """The sandbox's notion of "now" (unix seconds); objects created later are not yet visible."""

    def __init__(self, now: int):
        self._now = now
        self._lock = threading.Lock()

    def now(self) -> int:
        with self._lock:
            return self._now

    def set(self, now: int) -> None:
        with self._lock:
            self._now = int(now)


@dataclass
class Fault:
    """One injected failure, served ``count`` times to requests whose path starts with ``path_prefix``."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    stall_seconds: float = 0.0
    count: int = 1
    path_prefix: str = ""


class FaultPlan:
    """Thread-safe queue of faults plus a fixed latency, shared by tests, benchmarks and the CLI."""

    def __init__(self):
        self._lock = threading.Lock()
        self.latency_ms = 0
        self._faults: list[Fault] = []
        self.served = 0  # requests that reached the vendor app

    def configure(self, latency_ms: int | None = None, faults: list[Fault] | None = None) -> None:
        with self._lock:
            if latency_ms is not None:
                self.latency_ms = max(0, min(int(latency_ms), MAX_LATENCY_MS))
            if faults is not None:
                self._faults.extend(faults)

    def clear(self) -> None:
        with self._lock:
            self.latency_ms = 0
            self._faults.clear()

    def take(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if path.startswith(fault.path_prefix):
                    fault.count -= 1
                    if fault.count <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    @property
    def pending(self) -> int:
        with self._lock:
            return sum(f.count for f in self._faults)


def fault_from_json(item: dict) -> Fault:
    return Fault(status=item.get("status"), headers={str(k): str(v) for k, v in item.get("headers", {}).items()},
                 stall_seconds=min(float(item.get("stall_seconds", 0)), MAX_STALL_SECONDS),
                 count=max(1, int(item.get("count", 1))), path_prefix=str(item.get("path_prefix", "")))


class VendorApp:
    """A vendor's API as a function of a request; subclasses implement ``handle``."""

    name = "vendor"

    def handle(self, request: Request) -> Response:
        raise NotImplementedError

    def fault_response(self, status: int, headers: dict[str, str]) -> Response:
        """How this vendor words an injected error (overridden to match the vendor's error shape)."""
        return Response.json(status, {"error": f"injected fault {status}"}, headers)

    def control(self, request: Request) -> Response | None:
        """A vendor's own ``/_sandbox/…`` control path (e.g. Stripe's webhook delivery); None = not one."""
        return None


def _make_handler(app: VendorApp, faults: FaultPlan, clock: SandboxClock) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as separate writes: don't wait for ACKs
        server_version = f"m3-recon-sandbox/{app.name}"

        def log_message(self, format, *args):  # noqa: A002 - keep the sandbox quiet
            pass

        def _read_body(self) -> bytes | None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._send(Response.json(413, {"error": "request body too large"}))
                return None
            return self.rfile.read(length) if length else b""

        def _send(self, response: Response) -> None:
            try:
                self.send_response(response.status)
                for name, value in response.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                self.wfile.write(response.body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test); nothing to deliver

        def _control(self, request: Request) -> Response:
            if request.path == "/_sandbox/faults":
                if request.method == "DELETE":
                    faults.clear()
                    return Response.json(200, {"cleared": True})
                payload = request.json()
                faults.configure(payload.get("latency_ms"),
                                 [fault_from_json(item) for item in payload.get("faults", [])])
                return Response.json(200, {"latency_ms": faults.latency_ms, "pending": faults.pending})
            if request.path == "/_sandbox/clock":
                if request.method == "POST":
                    clock.set(int(request.json()["now"]))
                return Response.json(200, {"now": clock.now()})
            return app.control(request) or Response.json(404, {"error": "unknown sandbox control path"})

        def _dispatch(self) -> None:
            body = self._read_body()
            if body is None:
                return
            parts = urlsplit(self.path)
            request = Request(self.command, parts.path, parse_qsl(parts.query, keep_blank_values=True),
                              {k.lower(): v for k, v in self.headers.items()}, body)
            if request.path.startswith("/_sandbox/"):
                self._send(self._control(request))
                return
            if faults.latency_ms:
                time.sleep(faults.latency_ms / 1000)
            fault = faults.take(request.path)
            if fault is not None:
                if fault.stall_seconds:
                    time.sleep(fault.stall_seconds)
                if fault.status:
                    self._send(app.fault_response(fault.status, dict(fault.headers)))
                    return
            faults.served += 1
            try:
                response = app.handle(request)
            except Exception as exc:  # noqa: BLE001 - a sandbox bug must surface as a 500, not a hang
                response = Response.json(500, {"error": f"sandbox error: {type(exc).__name__}: {exc}"})
            self._send(response)

        do_GET = do_POST = do_PUT = do_DELETE = _dispatch

    return Handler


class VendorServer:
    """One vendor app on 127.0.0.1:<port> (0 = any free port), served from a daemon thread."""

    def __init__(self, app: VendorApp, clock: SandboxClock, port: int = 0):
        self.app = app
        self.faults = FaultPlan()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _make_handler(app, self.faults, clock))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"sandbox-{app.name}",
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "VendorServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


