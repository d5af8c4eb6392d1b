"""Run the real app (app.py) as a server on 127.0.0.1 for API and browser tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class AppServer:
    """`python app.py <args> --port N --data-dir D`, started and stopped around a test session."""

    def __init__(self, data_dir: Path, *args: str, startup_timeout: float = 180,
                 env: dict[str, str] | None = None, scheme: str = "http", verify=True):
        self.data_dir = Path(data_dir)
        self.extra_env = env or {}
        self.port = free_port()
        self.args = [*args, "--port", str(self.port), "--data-dir", str(self.data_dir)]
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.verify = verify  # the certificate to trust when serving https
        self.log_path = self.data_dir / "server.log"
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    def start(self) -> "AppServer":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
               "COMMANDLINE_ARGS": "", **self.extra_env}
        log = open(self.log_path, "w")
        self.process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), *self.args], cwd=ROOT,
                                        env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + self.startup_timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(self.url + "/", timeout=2, verify=self.verify).status_code < 500:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server did not start in {self.startup_timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "AppServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
