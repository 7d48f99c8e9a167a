"""Fixtures: the real gateway binary on a free port, and a TCP relay that can
cut connections or swallow replies (a bad network, for real)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
SECRET = "python-tests-secret-0123456789abcdef"


def binary() -> str:
    path = os.environ.get("SWITCHYARD_BIN") or str(ROOT / "target" / "debug" / "switchyard")
    if not Path(path).exists():
        pytest.fail(f"no gateway binary at {path}: run `cargo build` (or set SWITCHYARD_BIN)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Gateway:
    """One switchyard process; `restart()` keeps the port."""

    def __init__(self, env: dict[str, str], command: list[str] | None = None) -> None:
        self.env = env
        self.command = command
        self.port = free_port()
        self.logs: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self.start()

    def start(self) -> None:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "LOG_FORMAT": "json",
            "SHUTDOWN_GRACE_SECS": "2",
            **self.env,
        }
        self.process = subprocess.Popen(
            self.command or [binary()],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        ready = threading.Event()
        process = self.process

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                self.logs.append(line)
                try:
                    if " listening on http://" in str(json.loads(line).get("message")):
                        ready.set()
                except ValueError:
                    pass

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(20):
            self.stop()
            raise RuntimeError("gateway did not start:\n" + "".join(self.logs))

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def publish_url(self) -> str:
        return self.url("/_switchyard/publish")

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def get_json(self, path: str, token: str | None = None) -> Any:
        request = urllib.request.Request(self.url(path))
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    gw = Gateway({})
    yield gw
    gw.stop()


MakeGateway = Callable[..., Gateway]


@pytest.fixture
def make_gateway() -> Iterator[MakeGateway]:
    started: list[Gateway] = []

    def make(**env: str) -> Gateway:
        gw = Gateway(env)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


class Relay:
    """A TCP relay in front of the gateway. `cut()` closes every relayed
    connection; with `swallow_replies` set, the next N connections have their
    request delivered but the reply dropped (the socket closes instead)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.swallow_replies = 0
        self.connections = 0
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self.connections += 1
                swallow = self.swallow_replies > 0
                if swallow:
                    self.swallow_replies -= 1
                self._sockets += [client, upstream]
            for source, sink, drop in ((client, upstream, False), (upstream, client, swallow)):
                pump = threading.Thread(target=self._pump, args=(source, sink, drop), daemon=True)
                pump.start()

    def _pump(self, source: socket.socket, sink: socket.socket, swallow: bool) -> None:
        try:
            while data := source.recv(65536):
                if swallow:
                    # The request went through; its answer never arrives.
                    break
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def cut(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        self.cut()


RelayTo = Callable[[int], "Relay"]


@pytest.fixture
def relay_to() -> Iterator[RelayTo]:
    relays: list[Relay] = []

    def make(port: int) -> Relay:
        relay = Relay(port)
        relays.append(relay)
        return relay

    yield make
    for relay in relays:
        relay.close()


def wait_for(predicate: Callable[[], object], timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
