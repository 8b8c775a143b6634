"""The bus's services as processes on this machine: start `convbus` commands, wait until they
are ready, stop them.

`convbus up`, the tests' bus and `make bench` all start and stop the services this way.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: `convbus`, as this interpreter runs it (also without the console script on PATH).
CONVBUS = (sys.executable, "-m", "cli")


class ProcessExited(RuntimeError):
    """A process of the bus exited while it was expected to run."""


@dataclass
class BusProcess:
    """One `convbus` process: its output, and the port of its /readyz (the API's own port)."""

    name: str
    popen: subprocess.Popen[bytes]
    #: Where its output goes; None: to this process's own.
    log: Path | None
    port: int | None = None

    @classmethod
    def start(
        cls,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str],
        *,
        log: Path | None = None,
        port: int | None = None,
        cwd: Path | None = None,
        own_session: bool = False,
    ) -> BusProcess:
        """Start `convbus ARGS` with `env` (the whole environment), output to `log`.

        `own_session`: Ctrl-C in a terminal reaches only the caller, which stops it in order.
        """
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(log.open("wb")) if log is not None else None
            popen = subprocess.Popen(
                [*CONVBUS, *args],
                env=dict(env),
                stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
                cwd=cwd,
                start_new_session=own_session,
            )
        return cls(name, popen, log, port)

    @property
    def base(self) -> str:
        """Its HTTP address: /healthz, /readyz, /metrics (and the API's endpoints)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log is not None else ""

    def ready(self) -> bool:
        """Whether its /readyz answers 200; ProcessExited if it is not running."""
        if not self.running:
            raise ProcessExited(
                f"{self.name} exited with {self.popen.returncode}:\n{self.output()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(f"{self.base}/readyz", timeout=2) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float) -> None:
        """Until /readyz answers 200; ProcessExited, or TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name} not ready after {timeout:g} s:\n{self.output()[-3000:]}"
                )
            time.sleep(0.1)

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM): a service finishes its work in hand, then exits."""
        if self.running:
            self.popen.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited after `timeout` seconds; its exit code."""
        stop_all([self], timeout)
        return self.popen.returncode

    def kill(self) -> None:
        if self.running:
            self.popen.kill()
            self.popen.wait(5)


def stop_all(procs: Sequence[BusProcess], timeout: float) -> list[BusProcess]:
    """SIGTERM to all at once, SIGKILL to those still running after `timeout` seconds (a
    deadline shared by all); those that had to be killed."""
    for proc in procs:
        proc.terminate()
    deadline = time.monotonic() + timeout
    killed = []
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        if proc.running:
            proc.kill()
            killed.append(proc)
    return killed


#: Ports free_port handed out: a process given one may not have bound it yet, and the kernel
#: can offer the same port again meanwhile (two test processes once got the same ops port).
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, and not one handed out before."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
