"""``mvo dev`` as a user sees it in a terminal: a bad policy file fails it before any server
starts; the UI's URL comes only once the UI answers; Dagster's logs go to a file and each run
gets one line; the code location is ``mv_orchestration``. A real ``mvo dev`` process."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import psycopg
import pytest
import requests

from mv_orchestration.errors import ConfigError
from mv_orchestration.lib.policies.loading import load_policies
from mv_orchestration_tests.conftest import PgServer
from mv_orchestration_tests.e2e.test_dagster_dev import _free_port
from mv_orchestration_tests.faults.conftest import MVO, ROOT
from mv_orchestration_tests.faults.test_run_termination import Dev

pytestmark = pytest.mark.e2e

URL_LINE = re.compile(r"Dagster UI: (http://\S+)  \(Ctrl-C to stop\)")
# what a terminal must never show from mvo dev
NOISE = ("SupersessionWarning", "Use 'dg dev'", "No cursor for event type", "Stack Trace")
MAX_STARTUP_LINES = 10

VIEW_SQL = """
CREATE SCHEMA shop;
CREATE TABLE shop.orders (id int PRIMARY KEY, amount int NOT NULL);
INSERT INTO shop.orders SELECT g, g FROM generate_series(1, 40) g;
CREATE MATERIALIZED VIEW shop.mv_totals AS SELECT id % 4 AS k, sum(amount) AS total
  FROM shop.orders GROUP BY 1;
CREATE UNIQUE INDEX ON shop.mv_totals (k);
"""


@dataclass
class Terminal:
    """``mvo dev``'s terminal: its lines as they come (stdout and stderr together)."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    _queue: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def next_line(self, deadline: float) -> str | None:
        """The next line, None once the output ended; fails at ``deadline``."""
        left = deadline - time.monotonic()
        try:
            line = self._queue.get(timeout=max(0.0, left))
        except queue.Empty:
            raise AssertionError(f"no line in time; so far:\n{self.text}") from None
        if line is not None:
            self.lines.append(line)
        return line

    def wait_for(self, pattern: re.Pattern[str], deadline_s: float) -> re.Match[str]:
        deadline = time.monotonic() + deadline_s
        for seen in self.lines:
            if match := pattern.search(seen):
                return match
        while (line := self.next_line(deadline)) is not None:
            if match := pattern.search(line):
                return match
        raise AssertionError(f"mvo dev ended before {pattern.pattern!r}:\n{self.text}")

    def rest(self, deadline_s: float) -> str:
        """Everything up to the end of the output."""
        deadline = time.monotonic() + deadline_s
        while self.next_line(deadline) is not None:
            pass
        return self.text

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def dev_env(
    pg_server: PgServer, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """Settings for ``mvo dev`` on a database with one view, its instance in ``tmp_path``
    (also set here, for the test's own handle on the instance)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(VIEW_SQL)
    storage_db = f"dagster_{uuid.uuid4().hex[:8]}"
    storage = pg_server.create_database(storage_db)
    env = {
        "DATABASE_URL": db_url,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "MVO_DAGSTER_STORAGE_URL": storage.replace("postgresql://", "postgresql+psycopg2://"),
        "MVO_STATE_DIR": str(tmp_path / "state"),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    try:
        yield env
    finally:
        pg_server.drop_database(storage_db)


def _start(env: dict[str, str], port: int, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [MVO, "dev", "--port", str(port), "--no-generate", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _listening(port: int) -> bool:
    try:
        requests.get(f"http://127.0.0.1:{port}", timeout=2)
    except requests.ConnectionError:
        return False
    return True


def test_a_bad_policy_file_fails_mvo_dev_before_the_ui_starts(
    dev_env: dict[str, str], tmp_path: Path
) -> None:
    policies = tmp_path / "policies.yaml"
    policies.write_text(
        "defaults:\n"
        "  freshness: {warn: 1d, fail: 2d}\n"
        "groups:\n"
        "  shop:\n"
        '    schedules: [{cron: "every tuesday"}]\n'
    )
    with pytest.raises(ConfigError) as expected:  # the file's own one-line error
        load_policies(policies.resolve())
    port = _free_port()
    proc = _start({**dev_env, "MVO_POLICIES": str(policies)}, port)
    try:
        out = proc.communicate(timeout=120)[0]
    finally:
        _kill(proc)
    assert proc.returncode == 1, out
    assert out.strip().splitlines()[-1] == f"Error: {expected.value}", out
    assert "Traceback" not in out and "Dagster UI" not in out, out
    # no server was started: nothing answers, no Dagster log was written
    assert not _listening(port)
    assert not (Path(dev_env["MVO_STATE_DIR"]) / "dagster.log").exists()


def test_the_url_comes_once_the_ui_answers_then_one_line_per_run(
    dev_env: dict[str, str],
) -> None:
    port = _free_port()
    proc = _start(dev_env, port)
    term = Terminal(proc)
    try:
        url = term.wait_for(URL_LINE, 300).group(1)
        # printed only once the UI answers: a GET right after the line is a 200
        assert requests.get(url, timeout=10).status_code == 200
        assert url == f"http://127.0.0.1:{port}"
        startup = list(term.lines)
        assert len(startup) <= MAX_STARTUP_LINES, term.text
        dev = Dev(url, dev_env["DATABASE_URL"])
        # the code location's name, in the UI and on the run
        repos = dev.gql(
            "{ repositoriesOrError { ... on RepositoryConnection {"
            " nodes { location { name } } } } }"
        )["repositoriesOrError"]["nodes"]
        assert [r["location"]["name"] for r in repos] == ["mv_orchestration"]
        run_id = dev.launch("shop.mv_totals")
        line = term.wait_for(re.compile(rf"run {run_id[:8]}$"), 180).string
        assert re.fullmatch(
            rf"\d\d:\d\d:\d\d refreshed shop\.mv_totals  \d+\.\d s  4 rows  manual  run {run_id[:8]}",
            line,
        ), line
        with dg.DagsterInstance.from_config(dev_env["DAGSTER_HOME"]) as instance:
            run = instance.get_run_by_id(run_id)
            assert run is not None and run.remote_job_origin is not None
            assert run.remote_job_origin.location_name == "mv_orchestration"
        os.killpg(proc.pid, signal.SIGINT)
        out = term.rest(120)
        assert proc.wait(timeout=10) == 0, out
    finally:
        _kill(proc)
    # after the start-up lines: one line per run, then the stop's few lines
    after = term.lines[len(startup) :]
    assert after[0] == line and after[1].startswith("SIGINT: stopping"), out
    assert len(after) <= 5, out
    for noise in NOISE:
        assert noise not in out, out
    # Dagster's own logs are in the file
    log = (Path(dev_env["MVO_STATE_DIR"]) / "dagster.log").read_text()
    assert "dagster.daemon" in log and run_id in log


def test_verbose_shows_dagsters_logs_on_the_terminal(dev_env: dict[str, str]) -> None:
    port = _free_port()
    proc = _start(dev_env, port, "--verbose")
    term = Terminal(proc)
    try:
        term.wait_for(URL_LINE, 300)
        term.wait_for(re.compile("dagster[.]daemon"), 60)
        os.killpg(proc.pid, signal.SIGINT)
        out = term.rest(120)
        assert proc.wait(timeout=10) == 0, out
    finally:
        _kill(proc)
    assert "dagster.daemon" in out
    assert "SupersessionWarning" not in out and "Use 'dg dev'" not in out
    assert not (Path(dev_env["MVO_STATE_DIR"]) / "dagster.log").exists()
