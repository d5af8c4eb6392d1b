"""Stopping and restarting the server from the API (--api-server-stop), as the web UI whose
client programs call /sdapi/v1/server-stop, server-restart and server-kill allows."""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Callable

log = logging.getLogger(__name__)


class ServerControl:
    """app.serve() hands over how to stop the running server; the API routes ask for it."""

    def __init__(self):
        self._stop: Callable[[], None] | None = None
        self.restart_requested = False

    def attach(self, stop: Callable[[], None]) -> None:
        self._stop = stop

    def stop(self) -> None:
        """End the server gracefully: jobs running finish their step, the port is released."""
        log.info("stopping the server (asked for over the API)")
        if self._stop is not None:
            self._stop()

    def restart(self) -> None:
        """Stop, then start this program again with the same command line (app.serve does it
        once the port is free)."""
        self.restart_requested = True
        self.stop()

    @staticmethod
    def kill(delay: float = 0.2) -> None:
        """End the process at once (after the answer has gone out), whatever runs."""
        log.warning("killing the server (asked for over the API)")
        threading.Timer(delay, lambda: os._exit(0)).start()

    @staticmethod
    def exec_again() -> None:
        os.execv(sys.executable, [sys.executable, *sys.argv])
