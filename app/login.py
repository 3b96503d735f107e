"""Throttling of failed logins, per user name and per client address.

Gradio checks the password at `POST /login`; `LoginThrottle` wraps the app (ASGI middleware, passed to
`Blocks.launch` through `app_kwargs`). After `MAX_FAILURES` failed logins in a row for a user name, or
from an address, that name or address is refused for `LOCK_SECONDS` (HTTP 429, before the password is
even checked), and the lock is logged. A successful login clears the name's and the address's count.
Behind a reverse proxy on the same machine the address is the browser's (uvicorn reads the proxy's
X-Forwarded-For from 127.0.0.1 only).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

log = logging.getLogger("resi.app")

MAX_FAILURES = 5
LOCK_SECONDS = 30.0
MAX_TRACKED = 10_000  # names and addresses remembered; the least recently failed are forgotten first
MAX_LOGIN_BODY = 64 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass
class _Record:
    failures: int = 0
    locked_until: float = 0.0


class Throttle:
    """Failed-login counts per key ("user:NAME", "address:IP"): `MAX_FAILURES` failures in a row lock the
    key for `lock_seconds`. Thread-safe; `clock` is injectable for tests."""

    def __init__(self, max_failures: int = MAX_FAILURES, lock_seconds: float = LOCK_SECONDS,
                 clock: Callable[[], float] = time.monotonic, max_tracked: int = MAX_TRACKED):
        self.max_failures = max_failures
        self.lock_seconds = lock_seconds
        self.clock = clock
        self.max_tracked = max_tracked
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._lock = threading.Lock()

    def wait_seconds(self, *keys: str) -> float:
        """How long the longest lock among `keys` still lasts (0: none is locked)."""
        now = self.clock()
        with self._lock:
            waits = [r.locked_until - now for k in keys if (r := self._records.get(k)) is not None]
        return max([0.0, *waits])

    def failed(self, *keys: str) -> list[str]:
        """Count a failure for each key; return the keys this failure locked."""
        now, locked = self.clock(), []
        with self._lock:
            for key in keys:
                record = self._records.pop(key, None) or _Record()
                if record.locked_until and record.locked_until <= now:  # a lock that ran out starts over
                    record = _Record()
                record.failures += 1
                if record.failures >= self.max_failures and record.locked_until <= now:
                    record.locked_until = now + self.lock_seconds
                    record.failures = 0
                    locked.append(key)
                self._records[key] = record  # most recent last
            while len(self._records) > self.max_tracked:
                self._records.popitem(last=False)
        return locked

    def succeeded(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._records.pop(key, None)


def _is_login(scope: Scope) -> bool:
    return scope["type"] == "http" and scope.get("method") == "POST" and \
        scope.get("path", "").rstrip("/").endswith("/login")


class LoginThrottle:
    """ASGI middleware: refuses logins of locked user names and addresses, and counts Gradio's answers."""

    def __init__(self, app: ASGIApp, throttle: Throttle | None = None):
        self.app = app
        self.throttle = throttle or Throttle()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_login(scope):
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more and len(body) <= MAX_LOGIN_BODY:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if more:  # no login form is this large
            await _reply(send, 413, "The login request is too large.")
            return
        fields = parse_qs(body.decode("utf-8", "replace"))
        user = (fields.get("username") or [""])[0].strip()
        address = (scope.get("client") or ("unknown", 0))[0]
        keys = (f"user:{user}", f"address:{address}")
        wait = self.throttle.wait_seconds(*keys)
        if wait > 0:
            log.warning("login refused for user %r from %s: locked for %.0f more s after failed attempts",
                        user, address, wait)
            await _reply(send, 429, f"Too many failed logins. Try again in {int(wait) + 1} s.",
                         {"retry-after": str(int(wait) + 1)})
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        status: list[int] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        await self.app(scope, replay, watch)
        if status and status[0] == 200:
            self.throttle.succeeded(*keys)
        elif status and status[0] in (400, 401, 403):
            for key in self.throttle.failed(*keys):
                log.warning("login: %d failed attempts in a row for %s (user %r from %s); it is locked for %.0f s",
                            self.throttle.max_failures, key, user, address, self.throttle.lock_seconds)


async def _reply(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
