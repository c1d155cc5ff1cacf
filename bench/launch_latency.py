"""Benchmark I: run launch latency, from a launch request to the refresh's start, live.

Two real deployments run side by side on one PostgreSQL server, each a gRPC code server, a
``dagster-webserver`` and a ``dagster-daemon`` (the topology of docs/deployment.md), each with
its own Dagster storage database, over the same target database:

* **before**: ``dagster.yaml`` with the run queue's default dequeue interval (5 s);
* **after**: the same with the dequeue interval this repository's ``dagster.yaml`` sets.

Automation is off in both (``MVO_AUTOMATION=off``), so only the benchmark launches runs. Runs
are launched one at a time over GraphQL, alternating between the two deployments; each
refreshes one trivial MV. Per run, from the instance's events and the history row:

* **queued**: request → ``RUN_STARTING`` (the daemon dequeued it and called the launcher);
* **process**: ``RUN_STARTING`` → ``RUN_START`` (the code server started a run worker, which
  loaded the code location);
* **step**: ``RUN_START`` → the refresh's start (its history row's ``started_at``);
* **total**: request → the refresh's start.

Run: ``python -m bench.launch_latency [--runs 20]`` (prints a Markdown section).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import psycopg
import requests
import yaml

from bench.stats import Summary, fmt_ms
from mv_orchestration.demo.embedded import TemporaryServer, create_database

ROOT = Path(__file__).resolve().parents[1]
LOCATION = "mv_orchestration"
VIEW = ("lat", "mv_one")
SCHEMA_SQL = """
CREATE SCHEMA lat;
CREATE TABLE lat.src (id int PRIMARY KEY);
INSERT INTO lat.src SELECT generate_series(1, 10);
CREATE MATERIALIZED VIEW lat.mv_one AS SELECT id FROM lat.src;
CREATE UNIQUE INDEX ON lat.mv_one (id);
"""
LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
  }
}
"""
RUN = """
query R($id: ID!) { runOrError(runId: $id) { ... on Run {
  status
  eventConnection { events { __typename ... on MessageEvent { timestamp } } }
} } }
"""
PHASES = ("queued", "process", "step", "total")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _script(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _wait(condition: Callable[[], Any], what: str, deadline_s: float) -> Any:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {deadline_s:.0f} s waiting for {what}")


@dataclass
class Deployment:
    """One running deployment: its GraphQL URL and the processes behind it."""

    name: str
    dequeue_interval_s: int
    url: str = ""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    samples: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})

    def gql(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        resp = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60
        )
        resp.raise_for_status()
        body: dict[str, Any] = resp.json()
        if "errors" in body:
            raise RuntimeError(str(body["errors"]))
        data: dict[str, Any] = body["data"]
        return data

    def loaded(self) -> bool:
        try:
            return bool(self.gql("{ assetNodes { id } }", {})["assetNodes"])
        except (requests.RequestException, RuntimeError):
            return False


def _instance_yaml(dequeue_interval_s: int) -> str:
    config = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    coordinator = config.setdefault("run_coordinator", {})
    coordinator.setdefault("config", {})["dequeue_interval_seconds"] = dequeue_interval_s
    return yaml.safe_dump(config)


@contextmanager
def _deploy(
    dep: Deployment, server: TemporaryServer, db_url: str, workdir: Path
) -> Iterator[Deployment]:
    home = workdir / dep.name
    home.mkdir()
    (home / "dagster.yaml").write_text(_instance_yaml(dep.dequeue_interval_s))
    create_database(server.url, f"dagster_{dep.name}")
    storage = server.url_for(f"dagster_{dep.name}")
    grpc_port, web_port = _port(), _port()
    workspace = home / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - grpc_server:\n      host: 127.0.0.1\n"
        f"      port: {grpc_port}\n      location_name: {LOCATION}\n"
    )
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "MVO_SCHEMAS": VIEW[0],
        "MVO_AUTOMATION": "off",
        "DAGSTER_HOME": str(home),
        "MVO_DAGSTER_STORAGE_URL": storage.replace("postgresql://", "postgresql+psycopg2://", 1),
        "MVO_STATE_DIR": str(home / "state"),
    }
    commands = [
        [
            *(sys.executable, "-m", "dagster", "code-server", "start"),
            *("-h", "127.0.0.1", "-p", str(grpc_port), "--location-name", LOCATION),
            *("-m", "mv_orchestration.definitions", "-a", "defs"),
        ],
        [
            _script("dagster-webserver"),
            "-w",
            str(workspace),
            "-h",
            "127.0.0.1",
            "-p",
            str(web_port),
        ],
        [_script("dagster-daemon"), "run", "-w", str(workspace)],
    ]
    with ExitStack() as stack:
        for i, args in enumerate(commands):
            out = stack.enter_context((home / f"process-{i}.log").open("wb"))
            proc = subprocess.Popen(
                args, cwd=home, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            dep.procs.append(proc)
            stack.callback(_stop, proc)
        dep.url = f"http://127.0.0.1:{web_port}"
        _wait(dep.loaded, f"{dep.name} to load its code location", 300)
        yield dep


def _stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _event_time(events: list[dict[str, Any]], kind: str) -> float:
    for e in events:
        if e["__typename"] == kind:
            return float(e["timestamp"]) / 1000.0
    raise RuntimeError(f"no {kind} in the run's events")


def _one_run(dep: Deployment, conn: psycopg.Connection[Any]) -> None:
    selector = {
        "repositoryLocationName": LOCATION,
        "repositoryName": "__repository__",
        "jobName": "__ASSET_JOB",
        "assetSelection": [{"path": list(VIEW)}],
    }
    requested = time.time()
    launched = dep.gql(LAUNCH, {"params": {"selector": selector}})["launchRun"]
    if launched["__typename"] != "LaunchRunSuccess":
        raise RuntimeError(f"launch failed: {launched}")
    run_id = launched["run"]["runId"]

    def finished() -> dict[str, Any] | None:
        run: dict[str, Any] = dep.gql(RUN, {"id": run_id})["runOrError"]
        return run if run["status"] in ("SUCCESS", "FAILURE", "CANCELED") else None

    run = _wait(finished, f"run {run_id}", 300)
    if run["status"] != "SUCCESS":
        raise RuntimeError(f"run {run_id} ended {run['status']}")
    events = run["eventConnection"]["events"]
    row = conn.execute(
        "SELECT started_at FROM mvo.refresh_history WHERE run_id = %s", [run_id]
    ).fetchone()
    if row is None:
        raise RuntimeError(f"run {run_id} left no history row")
    refresh_start: datetime = row[0]
    starting, start = _event_time(events, "RunStartingEvent"), _event_time(events, "RunStartEvent")
    begun = refresh_start.astimezone(UTC).timestamp()
    for phase, seconds in zip(
        PHASES,
        (starting - requested, start - starting, begun - start, begun - requested),
        strict=True,
    ):
        dep.samples[phase].append(seconds)


def run_launch_latency(runs: int, log: Callable[[str], None]) -> list[Deployment]:
    deps = [Deployment("before", 5), Deployment("after", _configured_dequeue_interval())]
    workdir = Path(tempfile.mkdtemp(prefix="bench-launch-"))
    try:
        with TemporaryServer() as server:
            create_database(server.url, "bench_launch")
            db_url = server.url_for("bench_launch")
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute(SCHEMA_SQL)
            with ExitStack() as stack:
                for dep in deps:
                    stack.enter_context(_deploy(dep, server, db_url, workdir))
                    log(f"  {dep.name}: deployed (dequeue interval {dep.dequeue_interval_s} s)")
                with psycopg.connect(db_url, autocommit=True) as conn:
                    for i in range(runs):
                        for dep in deps if i % 2 == 0 else deps[::-1]:
                            _one_run(dep, conn)
                        log(f"  round {i + 1}/{runs} done")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return deps


def _configured_dequeue_interval() -> int:
    config = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    interval = (
        (config.get("run_coordinator") or {}).get("config", {}).get("dequeue_interval_seconds", 5)
    )
    return int(interval)


def render(deps: list[Deployment], runs: int, command: str, when: str) -> str:
    lines = [
        "| deployment | phase | n | median s | p95 s | max s |",
        "|---|---|---|---|---|---|",
    ]
    for dep in deps:
        for phase in PHASES:
            s = Summary.of(dep.samples[phase])
            label = f"{dep.name} (dequeue {dep.dequeue_interval_s} s)"
            lines.append(
                f"| {label} | {phase} | {s.n} | {fmt_ms(s.median_ms / 1000)} | "
                f"{fmt_ms(s.p95_ms / 1000)} | {fmt_ms(s.max_ms / 1000)} |"
            )
    return f"`{command}` on {when}, {runs} runs per deployment.\n\n" + "\n".join(lines) + "\n"


@click.command()
@click.option("--runs", default=20, show_default=True, help="Runs per deployment.")
def main(runs: int) -> None:
    """Measure run launch latency on two live deployments and print a Markdown table."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    deps = run_launch_latency(runs, lambda m: click.echo(m, err=True))
    command = "python -m bench.launch_latency" + ("" if runs == 20 else f" --runs {runs}")
    click.echo(render(deps, runs, command, when))


if __name__ == "__main__":
    main()
