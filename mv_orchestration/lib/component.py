"""``PostgresMaterializedViews``: one PostgreSQL database's materialized views as a Dagster
component, for any ``dg`` project.

The catalog (views, their sources, indexes, definitions) is the component's *defs state*:
:meth:`PostgresMaterializedViews.write_state_to_path` reads it, when ``dg utils
refresh-defs-state`` runs, or when ``dagster dev`` and the ``dg`` commands load the project
(Dagster's ``refresh_if_dev``); :meth:`~PostgresMaterializedViews.build_defs_from_state`
builds the assets, checks, schedules and sensors from the stored copy. A run worker, which
Dagster loads in reconstruction mode, builds from the stored copy and never reads the
catalog. A database that cannot be reached while the state is refreshed on load keeps its
last state (a warning names it); ``dg utils refresh-defs-state`` fails instead, naming it.

Each instance is one database: its own key prefix (default: the instance's folder name),
resource key, concurrency pool (``mvo_<prefix>``), jobs, sensors, history and state. The
stand-alone code location (``definitions.py``) builds the same model from environment
variables and uses the same build function, :meth:`~PostgresMaterializedViews.build_definitions`.
"""

# No ``from __future__ import annotations``: Dagster reads the fields' types at run time.
import logging
import os
import re
import textwrap
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Self

import dagster as dg
import yaml
from dagster.components import DefsStateConfig, DefsStateConfigArgs, ResolvedDefsStateConfig
from dagster.components.resolved.errors import ResolutionException
from pydantic import BaseModel, Field

from mv_orchestration.core.catalog import CatalogSnapshot
from mv_orchestration.core.files import write_atomic
from mv_orchestration.core.urls import parse_conninfo
from mv_orchestration.errors import CatalogError, ConfigError, DatabaseUnreachableError
from mv_orchestration.lib.alerting import Notifier, split_urls, url_problem
from mv_orchestration.lib.defs import DatabaseTarget, build_definitions
from mv_orchestration.lib.policies import PolicyFile, load_policies, parse_policies
from mv_orchestration.lib.resource import PostgresResource
from mv_orchestration.lib.snapshot import read_snapshot, read_state
from mv_orchestration.lib.translator import MvTranslator, TranslatorSettings, safe_name
from mv_orchestration.settings import (
    MAX_LOCK_RETRIES,
    MAX_RETENTION_DAYS,
    MAX_RETRIES,
    MAX_RETRY_DELAY_S,
    MAX_TIMEOUT_S,
    check_history_schema,
)

__all__ = [
    "DatabaseUrlError",
    "DatabaseUrlUnsetError",
    "GroupRules",
    "HistorySettings",
    "PostgresMaterializedViews",
    "RefreshSettings",
    "SettingNames",
    "resolve_database_url",
]

log = logging.getLogger("mv_orchestration")

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
# the whole value is one variable: {{ env.NAME }}, {{ env('NAME') }} or {{ env("NAME") }}
_ENV_TEMPLATE = re.compile(
    rf"\{{\{{\s*env(?:\.(?P<dot>{_NAME})|\(\s*(?P<q>['\"])(?P<call>{_NAME})(?P=q)\s*\))\s*\}}\}}"
)
# The folder of the instance being loaded: the default key prefix.
_LOADING_FOLDER: ContextVar[Path | None] = ContextVar("mvo_component_folder", default=None)
# Set while the state is read from the last copy without refreshing it (database down).
_NO_REFRESH: ContextVar[bool] = ContextVar("mvo_no_refresh", default=False)


class DatabaseUrlError(ConfigError, ResolutionException):
    """A ``database_url`` that may not be used; Dagster shows its one line as it is."""


class DatabaseUrlUnsetError(ConfigError):
    """The environment variable ``database_url`` names is not set where the catalog is read."""


def resolve_database_url(context: dg.ResolutionContext, raw: str) -> str:
    """``database_url`` as written in defs.yaml, before Dagster renders it.

    ``{{ env.NAME }}`` (or ``{{ env('NAME') }}``) becomes ``dg.EnvVar("NAME")``: the resource
    reads the variable where it runs, and the UI shows its name, never its value. Anything
    else is rendered and must be a URL without a password (libpq then takes it from
    ``PGPASSWORD`` or ``~/.pgpass``); one with a password is refused, in one line.
    """
    text = str(raw).strip()
    match = _ENV_TEMPLATE.fullmatch(text)
    if match:
        return dg.EnvVar(match.group("dot") or match.group("call"))
    value = str(context.resolve_value(text, as_type=str)) if "{{" in text else text
    try:
        info = parse_conninfo(value, "database_url")
    except ConfigError as exc:
        raise DatabaseUrlError(str(exc)) from None
    if info.secrets:
        raise DatabaseUrlError(
            "database_url holds a password, which the Dagster UI would show: put the URL in "
            'an environment variable and write database_url: "{{ env.NAME }}"'
        )
    return value


class GroupRules(dg.Resolvable, dg.Model):
    """Dagster groups of the assets: by schema, and by view (which wins). Unnamed schemas
    are their own group; a policy file's ``views.<v>.group`` moves a view last."""

    schemas: dict[str, str] = Field(
        default_factory=dict, description="schema name -> Dagster group"
    )
    views: dict[str, str] = Field(
        default_factory=dict, description='"schema.name" -> Dagster group (wins over schemas)'
    )


class HistorySettings(dg.Resolvable, dg.Model):
    """Where each refresh is recorded (``refresh_history`` and friends), and for how long."""

    schema_name: str = Field(
        default="mvo", alias="schema", description="schema of the history tables (created)"
    )
    retention_days: float = Field(
        default=30.0,
        gt=0,
        le=MAX_RETENTION_DAYS,
        description="a daily job deletes rows older than this",
    )


class RefreshSettings(dg.Resolvable, dg.Model):
    """How each refresh waits and retries (the README's refresh settings, per database)."""

    lock_timeout_s: float = Field(
        default=0.5,
        gt=0,
        le=MAX_TIMEOUT_S,
        description="lock wait of a blocking refresh (every new reader waits behind it)",
    )
    lock_retries: int = Field(
        default=14, ge=0, le=MAX_LOCK_RETRIES, description="attempts after a lock timeout"
    )
    statement_timeout_s: float = Field(
        default=1800.0, gt=0, le=MAX_TIMEOUT_S, description="longest one REFRESH may run"
    )
    retries: int = Field(
        default=2,
        ge=0,
        le=MAX_RETRIES,
        description="retries of a refresh step that failed for transient reasons only",
    )
    retry_delay_s: float = Field(
        default=30.0,
        gt=0,
        le=MAX_RETRY_DELAY_S,
        description="wait before the first such retry; doubles each time",
    )


@dataclass(frozen=True)
class SettingNames:
    """How error messages name the settings: the component's attributes, or the stand-alone
    code location's environment variables."""

    schemas: str = "schemas"
    exclude_schemas: str = "exclude_schemas"
    history_schema: str = "history.schema"
    alerts: str = "alerts"


ENV_SETTING_NAMES = SettingNames(
    schemas="MVO_SCHEMAS",
    exclude_schemas="MVO_EXCLUDE_SCHEMAS",
    history_schema="MVO_HISTORY_SCHEMA",
    alerts="MVO_ALERT_URLS",
)


class ScaffoldParams(BaseModel):
    database_url_env: str | None = Field(
        default=None,
        pattern=f"^{_NAME}$",
        description="environment variable holding the database URL "
        "(default: <FOLDER>_DATABASE_URL)",
    )


class PostgresMaterializedViewsScaffolder(dg.Scaffolder[ScaffoldParams]):
    """Writes a defs.yaml whose ``database_url`` names an environment variable."""

    @classmethod
    def get_scaffold_params(cls) -> type[ScaffoldParams]:
        return ScaffoldParams

    def scaffold(self, request: dg.ScaffoldRequest[ScaffoldParams]) -> None:
        folder = request.target_path.name
        env = request.params.database_url_env if request.params else None
        env = env or f"{safe_name(folder).upper()}_DATABASE_URL"
        url = f"{{{{ env.{env} }}}}"
        if request.scaffold_format != "yaml" or request.append:
            dg.scaffold_component(request, {"database_url": url})
            return
        (request.target_path / "defs.yaml").write_text(
            _SCAFFOLD_YAML.format(type=request.type_name, url=url, folder=folder)
        )


_SCAFFOLD_YAML = textwrap.dedent(
    """\
    type: {type}
    attributes:
      # An environment variable holding postgresql://user:password@host:5432/db
      # (the resource reads it where it runs; the UI shows its name only).
      database_url: "{url}"
      # schemas: [sales, finance]        # default: every non-system schema
      # exclude_schemas: [scratch]
      # key_prefix: {folder}              # default: this folder's name
      # groups: {{schemas: {{sales: sales_marts}}, views: {{"sales.mv_daily": daily}}}}
      # policies: policies.yaml          # or an inline mapping (schedules, freshness, ...)
      # alerts: ["json://alerts.internal/mvo", {{env: SLACK_WEBHOOK_URL}}]
      # history: {{schema: mvo, retention_days: 30}}   # or off
      # refresh: {{lock_timeout_s: 0.5, lock_retries: 14, statement_timeout_s: 1800,
      #           retries: 2, retry_delay_s: 30}}
      # automation: false                # leave its schedules and sensors stopped
    # Then read the catalog into the component's state:  dg utils refresh-defs-state
    """
)


@dg.scaffold_with(PostgresMaterializedViewsScaffolder)
@dataclass
class PostgresMaterializedViews(dg.StateBackedComponent, dg.Resolvable):
    """The materialized views of one PostgreSQL database, refreshed safely by Dagster.

    Every materialized view becomes an asset (refreshed ``CONCURRENTLY`` when it can be),
    its tables and views become source assets, and its lineage comes from the catalog.
    The catalog is read into the component's defs state (``dg utils refresh-defs-state``);
    run workers never read it.

    Example::

        # defs/app_db/defs.yaml
        type: mv_orchestration.PostgresMaterializedViews
        attributes:
          database_url: "{{ env.APP_DB_URL }}"
          schemas: [sales]
          policies: policies.yaml
    """

    database_url: Annotated[
        str,
        dg.Resolver(
            resolve_database_url,
            model_field_type=str,
            inject_before_resolve=False,
            description='The database, as "{{ env.NAME }}": the name of an environment '
            "variable holding its URL. A literal URL may not hold a password.",
            examples=["{{ env.APP_DB_URL }}"],
        ),
    ]
    schemas: list[str] | None = None
    exclude_schemas: list[str] = field(default_factory=list)
    key_prefix: str | list[str] | None = None
    groups: GroupRules = field(default_factory=GroupRules)
    policies: str | dict[str, Any] | None = None
    alerts: list[str | dict[str, str]] = field(default_factory=list)
    history: HistorySettings | bool | None = field(default_factory=HistorySettings)
    refresh: RefreshSettings = field(default_factory=RefreshSettings)
    automation: bool = True
    ui_base_url: str | None = None
    defs_state: ResolvedDefsStateConfig = field(
        default_factory=DefsStateConfigArgs.local_filesystem
    )

    # the folder of the instance's defs.yaml, when loaded from one (set in __post_init__)
    _folder: ClassVar[Path | None] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "_folder", _LOADING_FOLDER.get())

    @classmethod
    def load(cls, attributes: BaseModel | None, context: dg.ComponentLoadContext) -> Self:
        token = _LOADING_FOLDER.set(context.path)
        try:
            return super().load(attributes, context)
        finally:
            _LOADING_FOLDER.reset(token)

    # --- naming -------------------------------------------------------------------------------

    @property
    def prefix(self) -> tuple[str, ...]:
        """The asset key prefix: ``key_prefix``, else the instance's folder name."""
        if self.key_prefix is None:
            return (self._folder.name,) if self._folder is not None else ()
        if isinstance(self.key_prefix, str):
            return (self.key_prefix,) if self.key_prefix else ()
        return tuple(self.key_prefix)

    @property
    def alias(self) -> str:
        """The database's name in resource keys, pools, job and sensor names: the key prefix
        joined by ``_``; ``default`` without one (resource ``postgres``, pool ``mvo_default``)."""
        return "_".join(self.prefix) or "default"

    @property
    def label(self) -> str:
        return f"PostgresMaterializedViews {self.alias!r}"

    @property
    def setting_names(self) -> SettingNames:
        where = f"{self.label}: "
        return SettingNames(
            schemas=where + "schemas",
            exclude_schemas="exclude_schemas",
            history_schema=where + "history.schema",
            alerts=where + "alerts",
        )

    @property
    def defs_state_config(self) -> DefsStateConfig:
        config = DefsStateConfig.from_args(
            self.defs_state, default_key=f"PostgresMaterializedViews[{self.alias}]"
        )
        if _NO_REFRESH.get():
            return DefsStateConfig(
                key=config.key, management_type=config.management_type, refresh_if_dev=False
            )
        return config

    # --- state --------------------------------------------------------------------------------

    def dsn(self) -> str:
        """The URL to connect with now (an ``EnvVar`` read from the environment)."""
        if isinstance(self.database_url, dg.EnvVar):
            name = self.database_url.env_var_name
            value = (os.environ.get(name) or "").strip()
            if not value:
                raise DatabaseUrlUnsetError(
                    f"{self.label}: database_url names environment variable {name}, "
                    "which is not set"
                )
            parse_conninfo(value, name)
            return value
        return self.database_url

    def read_catalog(self, previous: CatalogSnapshot | None = None) -> CatalogSnapshot:
        """Read the database's catalog now (a :class:`DatabaseUnreachableError` when down)."""
        return read_snapshot(
            self.dsn(),
            alias=self.alias,
            schemas=self.schemas,
            exclude_schemas=self.exclude_schemas,
            previous=previous,
            schemas_setting=self.setting_names.schemas,
        )

    def write_state_to_path(self, state_path: Path) -> None:
        previous = read_state(state_path, what="defs state") if state_path.is_file() else None
        snapshot = self.read_catalog(previous)
        write_atomic(state_path, snapshot.to_json())
        log.info(
            "%s: catalog read (%d materialized views) into the defs state",
            self.label,
            len(snapshot.matviews),
        )

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        """Dagster's: refresh the state first where it does so on load (``dagster dev``, the
        ``dg`` commands), then build from it. A database that cannot be reached then leaves
        its last state in place, with a warning: its assets stay visible (their runs fail
        with the connection error), and the other components load as usual. So does an
        unset ``database_url`` variable (a build step that has no credentials)."""
        try:
            return super().build_defs(context)
        except (DatabaseUnreachableError, DatabaseUrlUnsetError) as exc:
            log.warning(
                "%s; showing the last state read (refresh it with: dg utils refresh-defs-state)",
                exc,
            )
        try:
            with _state_not_refreshed():
                return super().build_defs(context)
        except (DatabaseUnreachableError, DatabaseUrlUnsetError):
            # state kept only in the code server (LEGACY_CODE_SERVER_SNAPSHOTS): none to show
            log.warning("%s: no state to show until its database can be reached", self.label)
            return dg.Definitions()

    def build_defs_from_state(
        self, context: dg.ComponentLoadContext, state_path: Path | None
    ) -> dg.Definitions:
        if state_path is None:
            log.warning(
                "%s (%s): no catalog state yet, so no assets; read it with "
                "'dg utils refresh-defs-state' (dagster dev reads it when it starts)",
                self.label,
                context.path,
            )
            return dg.Definitions()
        try:
            snapshot = CatalogSnapshot.from_json(state_path.read_text())
        except (OSError, ValueError, KeyError, TypeError, CatalogError) as exc:
            raise CatalogError(
                f"{self.label}: its defs state {state_path} cannot be read "
                f"({type(exc).__name__}); refresh it with 'dg utils refresh-defs-state'"
            ) from exc
        return self.build_definitions(snapshot, base_dir=context.path, own_runs_only=True)

    # --- definitions --------------------------------------------------------------------------

    def history_config(self) -> tuple[str | None, timedelta]:
        """The history schema (None: off) and retention."""
        if self.history is None or self.history is False:
            return None, timedelta(days=30)
        settings = self.history if isinstance(self.history, HistorySettings) else HistorySettings()
        schema = check_history_schema(settings.schema_name, self.setting_names.history_schema)
        return schema, timedelta(days=settings.retention_days)

    def load_policies(self, base_dir: Path | None) -> PolicyFile | None:
        """``policies``: a policy file (relative to the instance's folder) or the same content
        inline; see lib/policies for the format."""
        if self.policies is None:
            return None
        if isinstance(self.policies, str):
            path = Path(self.policies).expanduser()
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            return load_policies(path)
        where = (base_dir / "defs.yaml") if base_dir is not None else Path(self.label)
        text = yaml.safe_dump(dict(self.policies), sort_keys=False)
        return parse_policies(text, Path(f"{where} (policies)"))

    def alert_urls(self, environ: Mapping[str, str]) -> tuple[str, ...]:
        """``alerts``: literal apprise URLs and ``{env: NAME}`` entries, resolved from
        ``environ``; an invalid URL or an unset variable is a ``ConfigError`` (alerts that
        are configured never silently go nowhere). URLs are never quoted."""
        where = self.setting_names.alerts
        urls: list[str] = []
        for i, entry in enumerate(self.alerts):
            if isinstance(entry, Mapping):
                name = entry.get("env", "")
                if set(entry) != {"env"} or not re.fullmatch(_NAME, name):
                    raise ConfigError(
                        f"{where}[{i}]: expected an apprise URL or {{env: NAME}}, the name "
                        "of an environment variable holding one or more"
                    )
                found = split_urls(environ.get(name, ""))
                if not found:
                    raise ConfigError(f"{where}[{i}].env: environment variable {name} is not set")
                for j, url in enumerate(found):
                    problem = url_problem(url)
                    if problem is not None:
                        raise ConfigError(f"{where}[{i}].env: {name}: URL #{j + 1} is {problem}")
                urls.extend(found)
            else:
                problem = url_problem(entry)
                if problem is not None:
                    raise ConfigError(f"{where}[{i}] is {problem}")
                urls.append(entry)
        return tuple(urls)

    def build_definitions(
        self,
        snapshot: CatalogSnapshot,
        *,
        base_dir: Path | None = None,
        environ: Mapping[str, str] | None = None,
        names: SettingNames | None = None,
        alert_sensor_prefix: str | None = None,
        own_runs_only: bool = False,
    ) -> dg.Definitions:
        """The definitions of this database from ``snapshot`` (a catalog read): assets,
        checks, the resource, schedules and sensors, through ``lib.defs.build_definitions``.

        ``base_dir`` resolves a relative policy file; ``environ`` (default: the process
        environment) the ``{env: NAME}`` alert entries; ``names`` words the errors.
        """
        names = names or self.setting_names
        environ = os.environ if environ is None else environ
        history_schema, retention = self.history_config()
        _check_history_schema(history_schema, snapshot, names)
        policies = self.load_policies(base_dir)
        translator = MvTranslator(
            TranslatorSettings(
                key_prefix=self.prefix,
                schema_groups=dict(self.groups.schemas),
                view_groups=dict(self.groups.views),
                database_alias=self.alias,
            ),
            policies=policies,
        )
        target = DatabaseTarget(
            alias=self.alias,
            resource=self.resource(),
            translator=translator,
            history_schema=history_schema,
            history_retention=retention,
        )
        routes = policies.alert_routes(environ) if policies is not None else None
        urls = (*self.alert_urls(environ), *(routes.urls if routes else ()))
        group_urls = routes.group_urls if routes else {}
        notifier = Notifier(urls, group_urls) if urls or group_urls else None
        default_prefix = "mvo" if self.alias == "default" else f"mvo_{safe_name(self.alias)}"
        return build_definitions(
            [(target, snapshot)],
            automation_running=self.automation,
            notifier=notifier,
            ui_base_url=self.ui_base_url,
            alert_sensor_prefix=alert_sensor_prefix or default_prefix,
            own_runs_only=own_runs_only,
        )

    def resource(self) -> PostgresResource:
        r = self.refresh
        return PostgresResource(
            dsn=self.database_url,
            lock_timeout_s=r.lock_timeout_s,
            lock_retries=r.lock_retries,
            statement_timeout_s=r.statement_timeout_s,
            transient_retries=r.retries,
            transient_retry_delay_s=r.retry_delay_s,
        )


@contextmanager
def _state_not_refreshed() -> Iterator[None]:
    token = _NO_REFRESH.set(True)
    try:
        yield
    finally:
        _NO_REFRESH.reset(token)


def _check_history_schema(
    schema: str | None, snapshot: CatalogSnapshot, names: SettingNames
) -> None:
    """The history schema must not hold views this database's definitions manage: they would
    share a schema with the tables the history writes and the retention job prunes."""
    held = sorted(mv.qualname for mv in snapshot.matviews if mv.schema == schema)
    if schema is None or not held:
        return
    shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
    raise ConfigError(
        f"{names.history_schema}={schema!r} holds managed materialized views ({shown}): "
        f"give the history a schema of its own, or leave {schema} out with "
        f"{names.exclude_schemas}"
    )
