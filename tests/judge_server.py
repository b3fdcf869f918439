"""A real HTTP server on 127.0.0.1 that speaks enough of the OpenAI chat-completions API to judge.

Used by the judge tests and ``bench/judge_throughput.py``. Verdicts come from a ``rule`` the test
controls: ``rule(user_message: str, request: dict) -> str | dict`` returns the reply text, or
``{"text": ..., "top_logprobs": {token: logprob}}`` to control the first token's log-probs. When
the request asks for logprobs (and ``logprobs=True``) a reply that starts with a label gets that
label at -0.01 and the other one at -4.6, unless the rule gave its own.

Faults are injected from a queue, one per request, in arrival order (``server.inject("429", ...)``):

- ``"429"`` / ``"500"`` / ``"503"``: that status, with ``retry-after-ms`` (``retry_after_ms``)
- ``"slow"``: answer only after ``slow_s`` seconds (longer than the client's timeout)
- ``"malformed"``: HTTP 200 with a body that is not JSON
- ``"no_choices"``: HTTP 200, valid JSON, no ``choices``
- ``"nonsense"``: a normal reply whose text names no label
- ``"401_echo"``: HTTP 401 whose message quotes the Authorization header (a leaky server)

``down = True`` answers every request with 503 until set back to False. Counters: ``requests``
(every POST to /chat/completions, faults included), ``faults_served``, ``max_in_flight``,
``user_messages`` (what was asked, in arrival order). ``require_key`` makes it answer 401 unless
the bearer token matches.

Run alone (for the benchmark, in its own process): ``python tests/judge_server.py --latency 0.1``
prints ``URL http://127.0.0.1:PORT/v1`` and serves until killed.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

Rule = Callable[[str, dict], "str | dict"]
LABELS = ("A", "B")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256      # the listen backlog: room for a burst of concurrent clients
    owner: "JudgeServer | None" = None   # the JudgeServer whose state the handler reads and counts


def always(label: str) -> Rule:
    return lambda user, request: label


class JudgeServer:
    def __init__(self, rule: Rule | None = None, *, latency_s: float = 0.0, logprobs: bool = True,
                 reject_logprobs: bool = False, retry_after_ms: int = 5, slow_s: float = 2.0,
                 model: str = "judge-test", require_key: str | None = None, port: int = 0):
        self.rule = rule or always("A")
        self.latency_s = latency_s
        self.logprobs = logprobs
        self.reject_logprobs = reject_logprobs
        self.retry_after_ms = retry_after_ms
        self.slow_s = slow_s
        self.model = model
        self.require_key = require_key
        self.down = False
        self.faults: collections.deque[str] = collections.deque()
        self.requests = 0
        self.faults_served: collections.Counter[str] = collections.Counter()
        self.user_messages: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", port), _Handler)
        self._httpd.owner = self
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "JudgeServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="judge-server")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> "JudgeServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def inject(self, *faults: str) -> None:
        with self._lock:
            self.faults.extend(faults)

    # ------------------------------------------------------------------ replies
    def _completion(self, request: dict, text: str, top: dict[str, float] | None) -> dict:
        prompt_chars = sum(len(str(m.get("content", ""))) for m in request.get("messages", []))
        body: dict[str, Any] = {
            "id": f"chatcmpl-{self.requests}", "object": "chat.completion",
            "created": int(time.time()), "model": request.get("model", self.model),
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": prompt_chars // 4, "completion_tokens": max(1, len(text) // 4),
                      "total_tokens": prompt_chars // 4 + max(1, len(text) // 4)},
        }
        if request.get("logprobs") and self.logprobs:
            if top is None:
                first = text.strip()[:1]
                if first in LABELS:
                    other = LABELS[1 - LABELS.index(first)]
                    top = {first: -0.01, other: -4.6}
                else:
                    top = {text[:3] or " ": -0.1}
            n = int(request.get("top_logprobs") or 0)
            items = sorted(top.items(), key=lambda kv: -kv[1])
            tok, lp = items[0]
            body["choices"][0]["logprobs"] = {"content": [{
                "token": tok, "logprob": lp, "bytes": list(tok.encode()),
                "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())}
                                 for t, v in items[:n]]}]}
        return body


class _Handler(BaseHTTPRequestHandler):
    """One request to the fake endpoint; ``judge`` is the :class:`JudgeServer` that owns the socket."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True   # headers and body go out in two writes: no 40 ms stalls

    @property
    def judge(self) -> "JudgeServer":
        return self.server.owner

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, payload: bytes | dict, headers: dict | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self):
        if self.path.rstrip("/").endswith("/models"):
            self._send(200, {"object": "list", "data": [{"id": self.judge.model, "object": "model"}]})
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        with self.judge._lock:
            self.judge.requests += 1
            self.judge.in_flight += 1
            self.judge.max_in_flight = max(self.judge.max_in_flight, self.judge.in_flight)
            fault = self.judge.faults.popleft() if self.judge.faults else None
            if fault:
                self.judge.faults_served[fault] += 1
        try:
            self._answer(raw, fault)
        finally:
            with self.judge._lock:
                self.judge.in_flight -= 1

    def _answer(self, raw: bytes, fault: str | None) -> None:
        if self.judge.latency_s:
            time.sleep(self.judge.latency_s)
        auth = self.headers.get("Authorization", "")
        retry = {"retry-after-ms": str(self.judge.retry_after_ms)}
        if fault == "401_echo":
            self._send(401, {"error": {"message": f"Incorrect API key provided: {auth}",
                                       "type": "invalid_request_error"}})
            return
        if self.judge.require_key is not None and auth != f"Bearer {self.judge.require_key}":
            self._send(401, {"error": {"message": "bad key", "type": "invalid_request_error"}})
            return
        if self.judge.down:
            self._send(503, {"error": {"message": "down"}}, retry)
            return
        if fault in ("429", "500", "503"):
            self._send(int(fault), {"error": {"message": f"injected {fault}"}}, retry)
            return
        if fault == "slow":
            time.sleep(self.judge.slow_s)
        if fault == "malformed":
            self._send(200, b'{"id": "chatcmpl-x", "choices": [{"index": 0, "mess')
            return
        if fault == "no_choices":
            self._send(200, {"id": "chatcmpl-x", "object": "chat.completion", "model": "m"})
            return
        try:
            request = json.loads(raw)
        except ValueError:
            self._send(400, {"error": {"message": "request body is not JSON"}})
            return
        if request.get("logprobs") and self.judge.reject_logprobs:
            self._send(400, {"error": {"message": "logprobs are not supported by this model",
                                       "type": "invalid_request_error"}})
            return
        user = next((m.get("content", "") for m in request.get("messages", [])
                     if m.get("role") == "user"), "")
        with self.judge._lock:
            self.judge.user_messages.append(user)
        if fault == "nonsense":
            text, top = "purple monkey dishwasher", None
        else:
            out = self.judge.rule(user, request)
            if isinstance(out, dict) and "status" in out:      # a rule may refuse a request for good
                self._send(out["status"], {"error": {"message": out.get("message", "refused")}})
                return
            text, top = (out, None) if isinstance(out, str) else (out["text"], out.get("top_logprobs"))
        self._send(200, self.judge._completion(request, text, top))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    ap.add_argument("--verdict", default="A")
    args = ap.parse_args(argv)
    server = JudgeServer(always(args.verdict), latency_s=args.latency, port=args.port)
    print(f"URL {server.url}", flush=True)
    try:
        server._httpd.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
