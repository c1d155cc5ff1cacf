-- Demo system 004: SaaS platform metrics (seed 004_5f3e5f55175a24c8).
--
-- A multi-tenant asset/licence management app (personal and team accounts). The admin
-- dashboard reads one precomputed row from platform_metrics. The seed refreshes it every
-- 5 minutes via pg_cron through refresh_platform_metrics_with_logging(), which writes
-- metrics_refresh_log (health: success rate < 95 % warn, < 80 % critical, avg > 5 s warn,
-- last refresh > 10 min ago warn). mv-orchestration replaces the function, the cron job and
-- the log table, so none of them is here.
--
-- Demo features in this schema:
--   * single-row MV with a unique index on a plain constant column (platform_metrics.id),
--     which is what makes its seed refresh CONCURRENTLY possible.

DROP SCHEMA IF EXISTS saas CASCADE;
CREATE SCHEMA saas;
COMMENT ON SCHEMA saas IS 'Demo: SaaS platform admin metrics (seed 004).';

-- Supabase-style: user ids come from the auth service, so there is no users table here.
CREATE TABLE saas.accounts (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    primary_owner_user_id uuid NOT NULL,
    name                  text NOT NULL,
    slug                  text UNIQUE,
    email                 text,
    is_personal_account   boolean NOT NULL DEFAULT false,
    picture_url           text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CHECK (is_personal_account OR slug IS NOT NULL)
);
CREATE INDEX accounts_owner_idx ON saas.accounts (primary_owner_user_id);
CREATE INDEX accounts_created_at_idx ON saas.accounts (created_at);

CREATE TABLE saas.accounts_memberships (
    user_id      uuid NOT NULL,
    account_id   uuid NOT NULL REFERENCES saas.accounts ON DELETE CASCADE,
    account_role text NOT NULL CHECK (account_role IN ('owner', 'admin', 'member')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, account_id)
);
CREATE INDEX accounts_memberships_account_idx ON saas.accounts_memberships (account_id);

CREATE TABLE saas.assets (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id    uuid NOT NULL REFERENCES saas.accounts ON DELETE CASCADE,
    name          text NOT NULL,
    category      text NOT NULL,
    serial_number text,
    status        text NOT NULL DEFAULT 'active'
                  CHECK (status IN ('active', 'in_repair', 'retired', 'lost')),
    purchase_date date,
    purchase_cost numeric(12, 2),
    assigned_to   uuid,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX assets_account_idx ON saas.assets (account_id);
CREATE INDEX assets_created_at_idx ON saas.assets (created_at);

CREATE TABLE saas.software_licenses (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id    uuid NOT NULL REFERENCES saas.accounts ON DELETE CASCADE,
    name          text NOT NULL,
    vendor        text NOT NULL,
    license_type  text NOT NULL CHECK (license_type IN ('subscription', 'perpetual', 'usage')),
    seats         integer NOT NULL CHECK (seats > 0),
    cost          numeric(12, 2) NOT NULL,
    purchase_date date NOT NULL,
    expiry_date   date,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX software_licenses_account_idx ON saas.software_licenses (account_id);
CREATE INDEX software_licenses_expiry_idx ON saas.software_licenses (expiry_date);

-- ---------------------------------------------------------------------------------------
-- Materialized view
-- ---------------------------------------------------------------------------------------

CREATE MATERIALIZED VIEW saas.platform_metrics AS
WITH acc AS (
    SELECT count(*)                                                       AS total_accounts,
           count(*) FILTER (WHERE is_personal_account)                    AS personal_accounts,
           count(*) FILTER (WHERE NOT is_personal_account)                AS team_accounts,
           count(*) FILTER (WHERE created_at >= now() - interval '30 days') AS new_accounts_30d,
           count(*) FILTER (WHERE created_at >= now() - interval '60 days'
                              AND created_at <  now() - interval '30 days') AS new_accounts_prev_30d,
           count(*) FILTER (WHERE is_personal_account
                              AND created_at >= now() - interval '30 days') AS new_users_30d
    FROM saas.accounts
), mem AS (
    SELECT count(*)                 AS total_memberships,
           count(DISTINCT user_id)  AS total_users
    FROM saas.accounts_memberships
), team AS (
    SELECT round(avg(members), 2) AS avg_team_size
    FROM (SELECT m.account_id, count(*) AS members
          FROM saas.accounts_memberships m
          JOIN saas.accounts a ON a.id = m.account_id AND NOT a.is_personal_account
          GROUP BY m.account_id) t
), ast AS (
    SELECT count(*)                                                       AS total_assets,
           count(*) FILTER (WHERE status = 'active')                      AS active_assets,
           coalesce(sum(purchase_cost) FILTER (WHERE status <> 'retired'), 0) AS asset_value,
           count(*) FILTER (WHERE created_at >= now() - interval '30 days') AS new_assets_30d
    FROM saas.assets
), lic AS (
    SELECT count(*)                                                       AS total_licenses,
           coalesce(sum(seats), 0)                                        AS total_license_seats,
           coalesce(sum(cost), 0)                                         AS license_cost,
           count(*) FILTER (WHERE expiry_date >= current_date
                              AND expiry_date < current_date + 30)        AS licenses_expiring_30d,
           count(*) FILTER (WHERE expiry_date < current_date)             AS expired_licenses,
           count(*) FILTER (WHERE created_at >= now() - interval '30 days') AS new_licenses_30d
    FROM saas.software_licenses
)
SELECT 1                                      AS id,
       acc.total_accounts,
       acc.personal_accounts,
       acc.team_accounts,
       mem.total_users,
       mem.total_memberships,
       team.avg_team_size,
       ast.total_assets,
       ast.active_assets,
       ast.asset_value,
       lic.total_licenses,
       lic.total_license_seats,
       lic.license_cost,
       lic.licenses_expiring_30d,
       lic.expired_licenses,
       acc.new_accounts_30d,
       acc.new_accounts_prev_30d,
       round(100.0 * (acc.new_accounts_30d - acc.new_accounts_prev_30d)
             / nullif(acc.new_accounts_prev_30d, 0), 2) AS account_growth_pct,
       acc.new_users_30d,
       ast.new_assets_30d,
       lic.new_licenses_30d
FROM acc, mem, team, ast, lic
WITH DATA;
CREATE UNIQUE INDEX platform_metrics_uq ON saas.platform_metrics (id);
COMMENT ON MATERIALIZED VIEW saas.platform_metrics IS
    'SaaS admin dashboard: one row of platform-wide totals and 30-day growth (accounts, users, assets, licences). Seed policy: */5 * * * *, concurrent; alert if success < 95 % (warn) / < 80 % (critical), avg duration > 5 s, or last refresh > 10 min ago.';
