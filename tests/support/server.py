"""Run the real app as a server on 127.0.0.1 for API and browser tests: as its own process
(AppServer: `python app.py ...`), or built and served inside the test process (InProcessServer)
where the process itself is not what a test is about."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
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
                 env: dict[str, str] | None = None, scheme: str = "http", verify=True,
                 under: str | None = None):
        self.data_dir = Path(data_dir)
        # A module to run app.py under (`python -m <under> app.py ...`), such as
        # tests.support.stalled_writes.
        self.under = under
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
        runner = ["-m", self.under] if self.under else []
        self.process = subprocess.Popen([sys.executable, *runner, str(ROOT / "app.py"), *self.args], cwd=ROOT,
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


class InProcessServer:
    """The app built from the same flags by app.build and served by uvicorn on a thread of this
    process, on 127.0.0.1: for tests that only talk to the app over HTTP (and the browser), not
    about its start, its command line or its process. It starts in a few seconds, where a new
    process spends most of AppServer's start importing torch and Gradio, and its `ctx` (the
    engine, the settings) is at hand for a test to watch or hold a job on the server's own
    worker thread.

    Same shape as AppServer: url, data_dir, start/stop, a context manager."""

    def __init__(self, data_dir: Path, *args: str, startup_timeout: float = 120,
                 env: dict[str, str] | None = None, config_root: Path | None = None):
        self.data_dir = Path(data_dir)
        self.config_root = config_root  # model config folders other than the repo's (tiny models')
        # Environment variables the app reads while it is built (HF_ENDPOINT): set for the build
        # only, then put back, since this process is the tests' own.
        self.build_env = env or {}
        self.port = free_port()
        self.args = [*args, "--port", str(self.port), "--data-dir", str(self.data_dir)]
        self.url = f"http://127.0.0.1:{self.port}"
        self.startup_timeout = startup_timeout
        self.ctx = None
        self._server = None
        self._thread: threading.Thread | None = None

    def start(self) -> "InProcessServer":
        import uvicorn

        import app
        from engine.settings.flags import parse
        from ui.server import create_server

        self.data_dir.mkdir(parents=True, exist_ok=True)
        # environ={}: COMMANDLINE_ARGS of the shell running the tests must not change the flags.
        before = {name: os.environ.get(name) for name in self.build_env}
        os.environ.update(self.build_env)
        try:
            self.ctx = app.build(parse(self.args, environ={}), config_root=self.config_root)
        finally:
            for name, value in before.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        config = uvicorn.Config(create_server(self.ctx), host="127.0.0.1", port=self.port, log_level="warning",
                                timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=f"app-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.time() + self.startup_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"the in-process server did not start in {self.startup_timeout}s")
            time.sleep(0.05)
        return self

    @property
    def engine(self):
        return self.ctx.engine

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.ctx is not None:
            self.ctx.engine.shutdown()

    def __enter__(self) -> "InProcessServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
