"""Running ``streamrec worker`` as a child process: used by the demo, the benchmark and the tests.

A child process is what operators run, so the demo and the integration tests exercise the
same start-up, shutdown and crash paths (SIGTERM, SIGKILL) as production.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

import orjson


class WorkerStartError(RuntimeError):
    """The worker process died or did not become ready in time."""


class WorkerProcess:
    """One ``streamrec worker`` child with its own data dir, web port and log file."""

    def __init__(
        self, env: dict[str, str], log_path: Path, web_port: int, loglevel: str = "warning"
    ) -> None:
        self.loglevel = loglevel
        self.env = {
            **os.environ,
            **env,
            "STREAMREC_WEB_PORT": str(web_port),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        self.log_path = log_path
        self.web_port = web_port
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        cmd = [
            sys.executable,
            "-c",
            "from streams.cli import main; main()",
            "worker",
            "--loglevel",
            self.loglevel,
        ]
        self.proc = subprocess.Popen(  # noqa: S603 - our own CLI
            cmd,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.log_path.parent,  # not the checkout: run the installed package
        )
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.web_port}{path}"

    def get_json(self, path: str, timeout_s: float = 2.0) -> Any:
        """GET a worker page and decode its JSON (raises URLError when it is not up)."""
        with urllib.request.urlopen(self.url(path), timeout=timeout_s) as resp:  # noqa: S310
            return orjson.loads(resp.read())

    def post_json(self, path: str, timeout_s: float = 2.0) -> Any:
        """POST (no body) to a worker page and decode its JSON answer."""
        request = urllib.request.Request(self.url(path), method="POST", data=b"")  # noqa: S310
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:  # noqa: S310
            return orjson.loads(resp.read())

    def wait_ready(self, timeout_s: float = 120.0) -> float:
        """Block until ``/healthz`` says ready; return the seconds it took."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.proc is None or self.proc.poll() is not None:
                raise WorkerStartError(f"worker exited early; log tail:\n{self.log_tail()}")
            try:
                if self.get_json("/healthz").get("ready"):
                    return time.monotonic() - t0
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
                pass
            time.sleep(0.25)
        raise WorkerStartError(f"worker not ready after {timeout_s}s; log tail:\n{self.log_tail()}")

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get_json("/stats")
        return result

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 30.0) -> None:
        """Send ``sig`` to the worker's process group and wait; SIGKILL if it lingers."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
