"""``mvo``: run the demo, inspect the catalog, refresh views through Dagster, manage the
embedded server. Errors print as one line and exit non-zero."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import psycopg

from mv_orchestration.errors import ConfigError, MvoError

if TYPE_CHECKING:
    from mv_orchestration.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

DEMO_DB = "mvo_demo"
STORAGE_DB = "dagster"


# Variables whose values may hold a password; with the URLs resolved in this process (the
# embedded server's), their secrets are taken out of every error message.
_SECRET_VARIABLES = ("DATABASE_URL", "MVO_DAGSTER_STORAGE_URL", "PGPASSWORD")
_resolved_urls: list[str] = []


def _redacted(text: str) -> str:
    from mv_orchestration.core.urls import redact, secrets_in

    values = [os.environ.get(name, "").strip() for name in _SECRET_VARIABLES]
    values = [v for v in (*values, *_resolved_urls) if v]
    secrets: set[str] = set(values)  # a whole string, should a library quote one
    for value in values:
        secrets |= secrets_in(value)
    return redact(text, secrets)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _one_line_errors(fn: F) -> F:
    """Turn expected failures into ``Error: <one line>`` and exit code 1; no password
    (of ``DATABASE_URL``, ``MVO_DAGSTER_STORAGE_URL``, ``PGPASSWORD``) is ever in it."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MvoError as exc:
            raise click.ClickException(_redacted(str(exc))) from None
        except psycopg.Error as exc:
            text = _redacted(_one_line(exc))
            if exc.sqlstate is None:  # no server answer: connection-level failure
                raise click.ClickException(f"cannot connect to the database: {text}") from None
            raise click.ClickException(
                f"database error [SQLSTATE {exc.sqlstate}]: {text}"
            ) from None
        except OSError as exc:  # a state directory that is a file, a full disk
            where = f": {exc.filename}" if exc.filename else ""
            raise click.ClickException(_redacted(f"{exc.strerror or exc}{where}")) from None
        except Exception as exc:
            from dagster import DagsterError

            if isinstance(exc, DagsterError):
                raise click.ClickException(_redacted(f"Dagster: {_one_line(exc)}")) from None
            raise

    return wrapper  # type: ignore[return-value]


def _echo_err(msg: str) -> None:
    click.echo(msg, err=True)


def _state_dir() -> Path:
    return Path(os.environ.get("MVO_STATE_DIR", ".mvo")).resolve()


def _embedded() -> Any:
    from mv_orchestration.demo.embedded import PersistentServer

    return PersistentServer(_state_dir() / "postgres")


STORAGE_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg2", "postgresql+psycopg")


def _psycopg2_url(url: str) -> str:
    """Dagster's storage speaks psycopg2; SQLAlchemy 2.1 would pick psycopg 3 for postgresql://."""
    head, sep, rest = url.strip().partition("://")
    return f"postgresql+psycopg2://{rest}" if sep and head in STORAGE_SCHEMES else url


def resolve_database_url() -> str:
    """DATABASE_URL, else the embedded demo database when its server is running; checked
    (a malformed URL is named, never quoted) and connected to once, so that a command fails
    at once with one line rather than load a cached catalog and retry its refreshes."""
    url = _database_url()
    with psycopg.connect(url, connect_timeout=DATABASE_CONNECT_TIMEOUT_S):
        pass
    return url


DATABASE_CONNECT_TIMEOUT_S = 10


def _database_url() -> str:
    from mv_orchestration.core.urls import parse_conninfo

    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        parse_conninfo(url, "DATABASE_URL")
        return url
    server = _embedded()
    status = server.status()
    if status.running:
        _echo_err(f"DATABASE_URL is not set; using the embedded demo database ({DEMO_DB})")
        from mv_orchestration.demo import data

        # the same policies as `mvo dev` uses for the demo, so groups and checks match the UI
        os.environ.setdefault("MVO_POLICIES", str(Path(data.__file__).parent / "policies.yaml"))
        url = str(server.url(DEMO_DB))
        _resolved_urls.append(url)
        return url
    raise ConfigError(
        "DATABASE_URL is not set and the embedded demo server is not running "
        "(export DATABASE_URL, or run 'mvo dev' / 'mvo db start')"
    )


@contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _dagster_home() -> Path:
    home = Path(os.environ.get("DAGSTER_HOME") or _state_dir() / "dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def _prepare_instance(project_dir: Path) -> dict[str, str]:
    """DAGSTER_HOME with our dagster.yaml, and Dagster's storage on the embedded server
    unless MVO_DAGSTER_STORAGE_URL names one (checked: it parses and accepts a connection)."""
    from mv_orchestration.core.files import write_atomic

    home = _dagster_home()
    env: dict[str, str] = {"DAGSTER_HOME": str(home)}
    if not (home / "dagster.yaml").exists() or "DAGSTER_HOME" not in os.environ:
        src = project_dir / "dagster.yaml"
        if not src.exists():
            raise ConfigError(f"{src} not found: run mvo from the project directory")
        # other mvo processes may be loading this instance right now
        write_atomic(home / "dagster.yaml", src.read_text())
    storage = os.environ.get("MVO_DAGSTER_STORAGE_URL", "").strip()
    if storage:
        _check_storage_url(storage)
    else:
        from mv_orchestration.demo.embedded import create_database

        server = _embedded()
        server.start()
        create_database(server.url(), STORAGE_DB)
        storage = server.url(STORAGE_DB)
        _resolved_urls.append(storage)
    env["MVO_DAGSTER_STORAGE_URL"] = _psycopg2_url(storage)
    return env


STORAGE_CONNECT_TIMEOUT_S = 5


def _check_storage_url(url: str) -> None:
    """MVO_DAGSTER_STORAGE_URL parses as a URL (the form Dagster's SQLAlchemy storage
    needs) and accepts a connection within STORAGE_CONNECT_TIMEOUT_S; else one line that
    quotes no part of it. The connection uses the parameters SQLAlchemy hands psycopg2."""
    from sqlalchemy.engine import make_url

    from mv_orchestration.core.urls import EXPECTED_URL, libpq_url, parse_conninfo

    name = "MVO_DAGSTER_STORAGE_URL"
    info = parse_conninfo(url, name, schemes=STORAGE_SCHEMES, url_only=True)
    try:
        parsed = make_url(libpq_url(url, STORAGE_SCHEMES))
        params: dict[str, Any] = parsed.translate_connect_args(username="user", database="dbname")
        params.update({k: v if isinstance(v, str) else v[-1] for k, v in parsed.query.items()})
    except Exception:  # SQLAlchemy's messages quote the URL
        raise ConfigError(
            f"{name} is not a valid PostgreSQL URL: Dagster's storage (SQLAlchemy) cannot "
            f"read it (one host, a numeric port); {EXPECTED_URL}"
        ) from None
    try:
        psycopg.connect(**params, connect_timeout=STORAGE_CONNECT_TIMEOUT_S).close()
    except psycopg.Error as exc:
        raise ConfigError(
            f"{name}: cannot connect to Dagster's storage database: {info.redact(_one_line(exc))}"
        ) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mv-orchestration")
def main() -> None:
    """mv-orchestration: keep PostgreSQL materialized views fresh with Dagster.

    Reads DATABASE_URL; without it, commands use the embedded demo server (see 'mvo dev').
    """
    logging.basicConfig(level=logging.WARNING, format="%(message)s")


# --- mvo dev --------------------------------------------------------------------------------


def _demo_loaded(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_matviews").fetchone()
    return bool(row and row[0] > 0)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the UI binds to.")
@click.option("--port", default=3000, show_default=True, type=int, help="Port of the UI.")
@click.option("--reload-demo", is_flag=True, help="Drop and reload the demo data first.")
@click.option("--scale", default=1.0, show_default=True, type=float, help="Demo data volume.")
@click.option(
    "--generate/--no-generate",
    default=True,
    show_default=True,
    help="Keep inserting demo traffic while the UI runs.",
)
@_one_line_errors
def dev(host: str, port: int, reload_demo: bool, scale: float, generate: bool) -> None:
    """Run the Dagster UI; without DATABASE_URL, on the embedded demo database."""
    from mv_orchestration.demo import data
    from mv_orchestration.demo.embedded import create_database

    project_dir = Path.cwd()
    if not (project_dir / "workspace.yaml").exists():
        raise ConfigError("workspace.yaml not found: run 'mvo dev' from the project directory")
    env = _prepare_instance(project_dir)
    url = os.environ.get("DATABASE_URL", "").strip()
    demo = not url
    if demo:
        server = _embedded()
        _echo_err(f"embedded PostgreSQL running ({server.pgdata}); stop it with 'mvo db stop'")
        create_database(server.url(), DEMO_DB)
        url = str(server.url(DEMO_DB))
        if reload_demo or not _demo_loaded(url):
            _echo_err(f"loading the demo systems (scale {scale}) ...")
            with psycopg.connect(url, autocommit=True) as conn:
                counts = data.load_demo(conn, scale=scale, progress=lambda m: _echo_err(f"  {m}"))
            _echo_err(f"loaded {sum(counts.values()):,} rows into {len(counts)} tables")
        env["DATABASE_URL"] = url
        if not os.environ.get("MVO_POLICIES"):
            env["MVO_POLICIES"] = str(Path(data.__file__).parent / "policies.yaml")
            _echo_err(f"refresh policies: {env['MVO_POLICIES']}")
    stop = threading.Event()
    gen: threading.Thread | None = None
    if demo and generate:
        gen = threading.Thread(
            target=data.run_generator,
            args=(url,),
            kwargs={"interval_s": 2.0, "stop": stop},
            daemon=True,
            name="demo-generator",
        )
        gen.start()
        _echo_err("demo traffic generator running (disable with --no-generate)")
    cmd = [
        sys.executable,
        "-m",
        "dagster",
        "dev",
        "-w",
        str(project_dir / "workspace.yaml"),
        "-h",
        host,
        "-p",
        str(port),
    ]
    _echo_err(f"Dagster UI: http://{host}:{port}  (Ctrl-C to stop)")
    # Run from DAGSTER_HOME so Dagster doesn't warn about the project's dagster.yaml in the
    # working directory; the workspace path is absolute and the state dir is pinned.
    env["MVO_STATE_DIR"] = str(_state_dir())

    @contextmanager
    def instance() -> Iterator[Any]:
        import dagster as dg

        with _env(**env), dg.DagsterInstance.get() as inst:
            yield inst

    from mv_orchestration.devserver import run_dagster_dev

    try:
        # Ctrl-C, `kill`, a closed terminal: runs in flight are terminated through Dagster
        # before dagster dev stops (mv_orchestration/devserver.py)
        code = run_dagster_dev(
            cmd, env={**os.environ, **env}, cwd=env["DAGSTER_HOME"], open_instance=instance
        )
    finally:
        stop.set()
        if gen is not None:
            gen.join(timeout=10)
    sys.exit(code)


# --- mvo discover ---------------------------------------------------------------------------


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the catalog snapshot as JSON.")
@click.option("--schema", "schemas", multiple=True, help="Only these schemas (repeatable).")
@_one_line_errors
def discover(as_json: bool, schemas: tuple[str, ...]) -> None:
    """List materialized views, their sources and refresh method, in refresh order."""
    from mv_orchestration.core.catalog import read_catalog
    from mv_orchestration.core.graph import LineageGraph
    from mv_orchestration.core.refresh import choose_method
    from mv_orchestration.lib.snapshot import check_schemas_exist

    url = resolve_database_url()
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        check_schemas_exist(conn, schemas, "--schema")
        snap = read_catalog(conn, list(schemas) or None)
    order = LineageGraph(snap).refresh_order()
    if as_json:
        payload = json.loads(snap.to_json())
        payload["refresh_order"] = [r.qualname for r in order]
        click.echo(json.dumps(payload, indent=2, sort_keys=True))
        return
    if not order:
        click.echo("no materialized views found")
        return
    import pandas as pd

    rows = []
    for i, ref in enumerate(order, start=1):
        mv = snap.matview(ref)
        rows.append(
            {
                "#": i,
                "view": mv.qualname,
                "method": choose_method(mv.populated, mv.has_usable_unique_index, "auto"),
                "size": _human_bytes(mv.size_bytes),
                "sources": ", ".join(r.qualname for r in mv.upstream),
            }
        )
    click.echo(pd.DataFrame(rows).to_string(index=False))
    click.echo(
        f"\n{len(order)} materialized views in {snap.database} (PostgreSQL {snap.server_version})"
    )


# --- mvo refresh ----------------------------------------------------------------------------


class _ProgressHandler(logging.Handler):
    """Prints the asset's own progress lines; Dagster's step/run events are left out."""

    def emit(self, record: logging.LogRecord) -> None:
        meta = getattr(record, "dagster_meta", None) or {}
        if meta.get("dagster_event") is not None:
            return
        click.echo(
            meta.get("orig_message") or record.getMessage(), err=record.levelno >= logging.WARNING
        )


@main.command()
@click.argument("views", nargs=-1)
@click.option("--group", "groups", multiple=True, help="Refresh every view in this group.")
@click.option("--all", "all_views", is_flag=True, help="Refresh every materialized view.")
@click.option("--downstream", is_flag=True, help="Also refresh views downstream of those named.")
@_one_line_errors
def refresh(
    views: tuple[str, ...], groups: tuple[str, ...], all_views: bool, downstream: bool
) -> None:
    """Refresh views through Dagster (recorded in the instance's run history).

    VIEWS are 'schema.name' or a bare name when it is unique.
    """
    import dagster as dg

    from mv_orchestration.definitions import build_from_settings
    from mv_orchestration.interrupt import execute_interruptibly
    from mv_orchestration.settings import Settings

    if not (views or groups or all_views):
        raise click.UsageError("name at least one VIEW, or use --group G or --all")
    url = resolve_database_url()
    env = _prepare_instance(Path.cwd())
    with _env(DATABASE_URL=url, **env):
        defs = build_from_settings(Settings.from_env())
        graph = defs.resolve_asset_graph()
        mv_keys = sorted(graph.materializable_asset_keys, key=lambda k: tuple(k.path))
        selected = _select(graph, mv_keys, views, groups, all_views, downstream)
        if not selected:
            raise _nothing_to_manage(Settings.from_env())
        job = defs.resolve_implicit_global_asset_job_def()

        @dg.logger
        def mvo_progress(init_context: dg.InitLoggerContext) -> logging.Logger:
            log = logging.Logger("mvo.progress", level=logging.INFO)
            log.addHandler(_ProgressHandler())
            return log

        job = job.with_logger_defs({"mvo": mvo_progress})
        click.echo(f"refreshing {len(selected)} view(s) through Dagster ...", err=True)
        with dg.DagsterInstance.get() as instance:
            # SIGINT/SIGTERM cancel the run (and exit) in any state: mv_orchestration/interrupt.py
            result = execute_interruptibly(
                job,
                instance=instance,
                asset_selection=selected,
                raise_on_error=False,
                run_config={"loggers": {"mvo": {}}},
                tags={"mvo/trigger": "cli"},
            )
    done = len(result.get_asset_materialization_events())
    if not result.success:
        failures = _failed_views(result.get_step_failure_events())
        raise click.ClickException(
            f"run {result.run_id} failed: {done} of {len(selected)} view(s) refreshed"
            + (f"; {failures}" if failures else "")
        )
    click.echo(f"run {result.run_id} succeeded: {done} view(s) refreshed")


@main.command()
@click.argument("views", nargs=-1, required=True)
@click.pass_context
def resume(ctx: click.Context, views: tuple[str, ...]) -> None:
    """Resume views the target-lag sensor suspended after repeated failures.

    Refreshes VIEWS once, as 'mvo refresh' does: when that succeeds, the sensor's next tick
    resumes them and the views downstream of them.
    """
    ctx.invoke(refresh, views=views, groups=(), all_views=False, downstream=False)
    click.echo("resumed: the target-lag sensor takes them up again on its next tick")


def _failed_views(events: Sequence[Any]) -> str:
    """Each failed view with its SQLSTATE and message, from the steps' failure metadata
    (``failed_views``, see lib/refresh_step.py); else the steps' own error messages."""
    parts: list[str] = []
    for event in events:
        data = event.step_failure_data
        meta = data.user_failure_data.metadata if data.user_failure_data else {}
        views = meta.get("failed_views")
        if views is not None:
            for v in views.value:
                code = f" [SQLSTATE {v['sqlstate']}]" if v.get("sqlstate") else ""
                parts.append(f"{v['view']}{code}: {v['message']}")
        elif data.error is not None:
            parts.append(data.error.message.strip().splitlines()[0])
    return "; ".join(parts)


def _nothing_to_manage(settings: Settings) -> ConfigError:
    """The error of ``mvo status``/``mvo refresh`` when the selected schemas hold no MVs."""
    where = (
        f"schema(s) {', '.join(settings.schemas)} (MVO_SCHEMAS)"
        if settings.schemas
        else "any schema of the database"
    )
    if settings.exclude_schemas:
        where += f", leaving out {', '.join(settings.exclude_schemas)} (MVO_EXCLUDE_SCHEMAS)"
    return ConfigError(f"nothing to manage: no materialized views in {where} (see 'mvo discover')")


def _select(
    graph: Any,
    mv_keys: Sequence[Any],
    views: Sequence[str],
    groups: Sequence[str],
    all_views: bool,
    downstream: bool,
) -> list[Any]:
    """Asset keys of the MVs named, in the groups given, optionally with their downstream."""
    from mv_orchestration.errors import UnknownViewError

    if all_views:
        return list(mv_keys)
    chosen: set[Any] = set()
    for name in views:
        parts = name.split(".", 1) if "." in name else [name]
        matches = [k for k in mv_keys if list(k.path[-len(parts) :]) == parts]
        if not matches:
            raise UnknownViewError(f"no materialized view named {name!r} (see 'mvo discover')")
        if len(matches) > 1:
            names = ", ".join(".".join(k.path) for k in matches)
            raise UnknownViewError(f"{name!r} is ambiguous: {names}; use schema.name")
        chosen.add(matches[0])
    for group in groups:
        in_group = [k for k in mv_keys if graph.get(k).group_name == group]
        if not in_group:
            known = sorted({graph.get(k).group_name for k in mv_keys})
            raise UnknownViewError(f"no views in group {group!r} (groups: {', '.join(known)})")
        chosen.update(in_group)
    if downstream:
        mv_set = set(mv_keys)
        frontier = list(chosen)
        while frontier:
            for child in graph.get(frontier.pop()).child_keys:
                if child in mv_set and child not in chosen:
                    chosen.add(child)
                    frontier.append(child)
    return sorted(chosen, key=lambda k: tuple(k.path))


# --- mvo status -----------------------------------------------------------------------------


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``1.5h``, ``7d``, ``1d12h`` → seconds (the policy file's grammar)."""
    from mv_orchestration.lib.policies import parse_duration as parse

    delta = parse(text)
    if delta is None:
        raise click.BadParameter(f"{text!r}: use numbers with units d, h, m, s (e.g. 24h, 1d12h)")
    if delta.total_seconds() <= 0:
        raise click.BadParameter(f"{text!r}: must be greater than 0")
    return delta.total_seconds()


def _freshness_states(keys: Sequence[Any]) -> dict[Any, str]:
    """Freshness state per asset key as Dagster's freshness daemon last recorded it."""
    import dagster as dg

    try:
        with dg.DagsterInstance.get() as instance:
            records = instance.get_freshness_state_records(list(keys))
    except Exception:  # no instance or no storage reachable: status still works
        return {}
    return {key: rec.freshness_state.value for key, rec in records.items()}


@main.command()
@click.argument("views", nargs=-1)
@click.option("--since", "since", default="24h", show_default=True, help="Window: 90m, 24h, 7d.")
@click.option("--group", "groups", multiple=True, help="Only views in this group.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_one_line_errors
def status(views: tuple[str, ...], since: str, groups: tuple[str, ...], as_json: bool) -> None:
    """Health of every view from the refresh history; exit 2 when any is critical.

    healthy / warning / critical follow seed 004's rules: success rate below 95 % warns,
    below 80 % is critical; average duration above 5 s warns; last success over 10 min ago
    warns. FRESHNESS is the state Dagster's freshness policy last recorded. TARGET is the
    view's target lag; LAG_P50 and LAG_MAX the lag its target-lag refreshes achieved in the
    window, IN_TARGET the share of them that met the target.
    """
    from datetime import UTC, datetime

    from mv_orchestration.core import history
    from mv_orchestration.core.health import health_table
    from mv_orchestration.definitions import build_from_settings
    from mv_orchestration.settings import Settings

    window_s = parse_duration(since)
    url = resolve_database_url()
    env = _prepare_instance(Path.cwd())
    with _env(DATABASE_URL=url, **env):
        settings = Settings.from_env()
        if settings.history_schema is None:
            raise ConfigError("refresh history is off (MVO_HISTORY_SCHEMA=off): no status to show")
        graph = build_from_settings(settings).resolve_asset_graph()
        mv_keys = sorted(graph.materializable_asset_keys, key=lambda k: tuple(k.path))
        if not mv_keys:
            raise _nothing_to_manage(settings)
        if views or groups:
            keys = _select(graph, mv_keys, views, groups, all_views=False, downstream=False)
        else:
            keys = mv_keys
        refs = [(k.path[-2], k.path[-1]) for k in keys]
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            history.ensure_history(conn, settings.history_schema)
            stats = history.read_stats(
                conn, settings.history_schema, hours=window_s / 3600, views=refs
            )
            lags = history.read_lag_stats(
                conn, settings.history_schema, refs, hours=window_s / 3600
            )
        fresh = _freshness_states(keys)
        targets = {
            (k.path[-2], k.path[-1]): graph.get(k).metadata.get("mvo/target_lag") for k in keys
        }
    table = health_table(stats, datetime.now(UTC))
    _add_lag_columns(table, targets, lags)
    from mv_orchestration.core.sql import qualname

    # health_table's "view" column is qualname(schema, name)
    fresh_by_view = {qualname(k.path[-2], k.path[-1]): fresh.get(k, "UNKNOWN") for k in keys}
    table["freshness"] = [fresh_by_view.get(view, "UNKNOWN") for view in table["view"]]
    critical = int((table["health"] == "critical").sum())
    if as_json:
        click.echo(table.to_json(orient="records", date_format="iso", indent=2))
    elif table.empty:
        click.echo("no materialized views")
    else:
        shown = table.assign(
            last_success=table["last_success"].map(
                lambda t: "never" if t is None or t != t else str(t)[:19]
            ),
            age=table["age_s"].map(lambda a: "-" if a is None or a != a else f"{a:,.0f}s"),
            success=table["success_rate"].map(lambda r: "-" if r is None or r != r else f"{r}%"),
            avg_s=table["avg_duration_s"].map(lambda d: "-" if d is None or d != d else f"{d:.3f}"),
            max_s=table["max_duration_s"].map(lambda d: "-" if d is None or d != d else f"{d:.3f}"),
            lag_p50=table["lag_p50_s"].map(_seconds_text),
            lag_max=table["lag_max_s"].map(_seconds_text),
            in_target=table["within_target_pct"].map(
                lambda r: "-" if r is None or r != r else f"{r:g}%"
            ),
        )[
            [
                "view",
                "health",
                "freshness",
                "target",
                "lag_p50",
                "lag_max",
                "in_target",
                "last_success",
                "age",
                "success",
                "avg_s",
                "max_s",
                "reasons",
            ]
        ]
        click.echo(shown.to_string(index=False))
        counts = table["health"].value_counts()
        click.echo(
            f"\n{len(table)} views over {since}: "
            + ", ".join(f"{counts.get(h, 0)} {h}" for h in ("critical", "warning", "healthy"))
        )
    if critical:
        sys.exit(2)


def _seconds_text(value: Any) -> str:
    from mv_orchestration.core.lag import format_duration

    return "-" if value is None or value != value else format_duration(float(value))


def _add_lag_columns(table: Any, targets: Mapping[Any, Any], lags: Mapping[Any, Any]) -> None:
    """``target`` (the view's target lag), ``lag_p50_s``/``lag_max_s`` (achieved by its
    target-lag refreshes in the window) and ``within_target_pct`` (the share that met it)."""
    from mv_orchestration.core.sql import qualname

    by_view = {qualname(s, n): (targets.get((s, n)), lags.get((s, n))) for s, n in targets}
    pairs = [by_view.get(view, (None, None)) for view in table["view"]]
    table["target"] = [str(t.value if hasattr(t, "value") else t) if t else "-" for t, _ in pairs]
    table["lag_p50_s"] = [
        None if s is None or s.lag_p50_ms is None else s.lag_p50_ms / 1000 for _, s in pairs
    ]
    table["lag_max_s"] = [
        None if s is None or s.lag_max_ms is None else s.lag_max_ms / 1000 for _, s in pairs
    ]
    table["within_target_pct"] = [None if s is None else s.within_target_pct for _, s in pairs]
    for col in ("lag_p50_s", "lag_max_s", "within_target_pct"):
        table[col] = table[col].astype("float64")


# --- mvo db ---------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Manage the embedded PostgreSQL server (data in .mvo/postgres)."""


@db.command("start")
@_one_line_errors
def db_start() -> None:
    """Start the embedded server (initialising it on first use) and print its URL.

    The URL is printed without the password; 'mvo db url' prints it with.
    """
    from mv_orchestration.core.urls import without_password

    server = _embedded()
    url = server.start()
    click.echo(without_password(url))
    _echo_err("(password left out: 'mvo db url' prints the full URL)")


@db.command("stop")
@_one_line_errors
def db_stop() -> None:
    """Stop the embedded server."""
    click.echo("stopped" if _embedded().stop() else "not running")


@db.command("status")
@_one_line_errors
def db_status() -> None:
    """Say whether the embedded server runs; exit 1 when it does not."""
    st = _embedded().status()
    if st.running:
        click.echo(f"running (pid {st.pid}), data in {st.pgdata}")
    else:
        click.echo(f"not running, data in {st.pgdata}")
        sys.exit(1)


@db.command("url")
@click.option("--database", default=DEMO_DB, show_default=True)
@_one_line_errors
def db_url(database: str) -> None:
    """Print the connection URL of a database on the embedded server.

    The URL includes the embedded server's superuser password (generated by the first
    'mvo db start', kept in a file under .mvo that only its owner can read): keep it out of
    shared logs. The server listens on 127.0.0.1 only.
    """
    click.echo(_embedded().url(database))


if __name__ == "__main__":  # pragma: no cover
    main()
