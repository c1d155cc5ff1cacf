"""Refresh policies of materialized views, from one YAML file.

Format (every section and key is optional)::

    defaults:            # applies to every MV
      schedules: []      # list of {cron: "*/5 * * * *", timezone: "UTC"}; timezone defaults to UTC
      on_change: false   # change-driven refresh by the source-change sensor
      target_lag: 1h     # how stale the view may be: a duration (at least 1m), or downstream;
                         # null/false: none (see below for the default)
      freshness: {warn: 15m, fail: 1h}   # or null; durations like 90s, 15m, 2h, 1d, 1d12h
      owners: []         # e-mails or team:name
      tags: {}           # Dagster asset tags
      checks: {}         # free-form thresholds for asset checks
      alerts: []         # apprise destinations of every alert, besides MVO_ALERT_URLS (below)
    groups:              # keyed by Dagster group name (= schema by default); same keys as defaults
      mes:
        schedules:
          - {cron: "*/2 6-22 * * *", timezone: "Asia/Seoul"}
        alerts:          # alerts of this group's views also go here
          - {env: MVO_ALERTS_MES}           # a variable holding one or more apprise URLs
          - "json://alerts.internal/mvo"    # a literal URL, for destinations without a secret
    views:               # keyed by "schema.name" or a glob like "marketing.*_aggregations"
      marketing.weekly_aggregations:
        schedules: [{cron: "0 4 * * 1", timezone: "UTC"}]
        group: marketing_weekly     # optional: move the view to another Dagster group

One MV's policy is built from defaults, then its group, then every matching ``views`` entry
(globs in file order, the exact name last). Lists and scalars replace; ``tags`` and ``checks``
merge (``checks`` recursively). ``freshness`` is replaced as a whole, so ``warn`` always stays
below ``fail``. A ``group:`` in a matching ``views`` entry moves the view, and the settings of
that group apply instead of the old one's. An empty key (``schedules:``) means empty.

``target_lag`` is the age of the oldest change in any root source (a table the view reads,
directly, through views or through other MVs) that the view may still be missing; the
target-lag sensor refreshes the view, upstream MVs first, just in time to keep it
(:mod:`mv_orchestration.core.lag`). ``downstream`` follows the smallest target of the views
that read it. A view whose resolved policy sets neither ``target_lag`` nor ``schedules`` nor
``on_change`` gets the default, ``1h`` (so does every view without a policy file); one with a
schedule or ``on_change`` and no ``target_lag`` gets none. A view without ``freshness`` gets a
freshness policy from its (effective) target lag: WARN past the target, FAIL past 3 times it.

``alerts`` (in ``defaults`` and ``groups`` only) add up instead: an alert about a view goes to
``MVO_ALERT_URLS``, ``defaults.alerts`` and the alerts of the view's group (after any move).
Each entry is a literal apprise URL or ``{env: NAME}``, the name of an environment variable
holding one or more URLs (comma/whitespace separated, like ``MVO_ALERT_URLS``), so secret
webhook URLs stay out of the file. Literal URLs are checked when the file is parsed; the
variables when the definitions load (:meth:`PolicyFile.alert_routes`), where an unset or empty
variable is an error: configured alerts never silently go nowhere.

Every error is a :class:`ConfigError` of one line, ``<file>: <key path>: <reason>``, e.g.
``policies.yaml: views."mes.mv_x".schedules[1].cron: invalid cron expression '*/99 * * * *'``
(list indexes count from 0); an unknown key lists the keys allowed there. Of several problems
the first in the file is named (in a mapping, its keys before its values).

:mod:`.model` holds the file's shape (pydantic models) and the rules of its values,
:mod:`.loading` reads a file and words the errors, :mod:`.resolution` resolves the policies.
"""

from mv_orchestration.lib.policies.loading import load_policies, parse_policies
from mv_orchestration.lib.policies.model import (
    AlertDestination,
    Freshness,
    Schedule,
    ViewPolicy,
    format_key_path,
    parse_duration,
)
from mv_orchestration.lib.policies.resolution import (
    FAIL_MULTIPLE,
    AlertRoutes,
    PolicyFile,
    freshness_policy,
)

__all__ = [
    "FAIL_MULTIPLE",
    "AlertDestination",
    "AlertRoutes",
    "Freshness",
    "PolicyFile",
    "Schedule",
    "ViewPolicy",
    "format_key_path",
    "freshness_policy",
    "load_policies",
    "parse_duration",
    "parse_policies",
]
