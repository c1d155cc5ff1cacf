-- Demo system 001: LLM API usage analytics (seed 001_0520fae963c52811).
--
-- The seed refreshes four MVs from refresh_analytics_views(), called by statement triggers on
-- every INSERT/UPDATE of api_usage, by a dashboard button and by a "refresh if stale" hybrid
-- that logs into analytics_reports. mv-orchestration replaces all of that (change sensor,
-- Materialize button, freshness policy), so none of it is recreated here.
--
-- Demo features in this schema:
--   * partitioned source table: llm_usage.api_usage is RANGE-partitioned by month on
--     created_at (6 months back to 3 months ahead of the load, plus a DEFAULT partition).
--   * MV reading through a plain view: llm_usage.mv_model_costs reads llm_usage.v_successful_calls.
--   * MV WITHOUT any unique index: llm_usage.mv_model_usage (as in the seed, whose refresh
--     function is not CONCURRENT); it can only be refreshed blocking its readers.

DROP SCHEMA IF EXISTS llm_usage CASCADE;
CREATE SCHEMA llm_usage;
COMMENT ON SCHEMA llm_usage IS 'Demo: LLM API usage analytics dashboard (seed 001).';

CREATE TABLE llm_usage.model_pricing (
    provider          text NOT NULL,
    model             text NOT NULL,
    input_per_1k_usd  numeric(10, 6) NOT NULL,
    output_per_1k_usd numeric(10, 6) NOT NULL,
    context_window    integer NOT NULL,
    is_embedding      boolean NOT NULL DEFAULT false,
    PRIMARY KEY (provider, model)
);

-- bigserial rather than an identity column: identity columns on partitioned tables need
-- PostgreSQL 17, the demo schema should load on 14+.
CREATE TABLE llm_usage.api_usage (
    id            bigserial,
    user_id       text NOT NULL,
    service_type  text NOT NULL,
    provider      text NOT NULL,
    model         text NOT NULL,
    status        text NOT NULL CHECK (status IN ('success', 'error', 'timeout', 'rate_limited')),
    error_code    text,
    input_tokens  integer NOT NULL DEFAULT 0,
    output_tokens integer NOT NULL DEFAULT 0,
    total_tokens  integer NOT NULL DEFAULT 0,
    input_cost    numeric(12, 6) NOT NULL DEFAULT 0,
    output_cost   numeric(12, 6) NOT NULL DEFAULT 0,
    total_cost    numeric(12, 6) NOT NULL DEFAULT 0,
    latency_ms    integer NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);

CREATE INDEX api_usage_created_at_idx ON llm_usage.api_usage (created_at);
CREATE INDEX api_usage_provider_model_idx ON llm_usage.api_usage (provider, model);
CREATE INDEX api_usage_user_idx ON llm_usage.api_usage (user_id);

-- Monthly partitions around the load date. Partition bounds must be literals, hence dynamic
-- DDL; the names are fixed patterns (api_usage_YYYY_MM), quoted with %I anyway.
DO $$
DECLARE
    first_month date := (date_trunc('month', now() AT TIME ZONE 'UTC') - interval '6 months')::date;
    m date;
BEGIN
    FOR i IN 0..9 LOOP
        m := (first_month + make_interval(months => i))::date;
        EXECUTE format(
            'CREATE TABLE llm_usage.%I PARTITION OF llm_usage.api_usage FOR VALUES FROM (%L) TO (%L)',
            'api_usage_' || to_char(m, 'YYYY_MM'),
            to_char(m, 'YYYY-MM-DD') || ' 00:00:00+00',
            to_char((m + interval '1 month')::date, 'YYYY-MM-DD') || ' 00:00:00+00');
    END LOOP;
END
$$;
CREATE TABLE llm_usage.api_usage_default PARTITION OF llm_usage.api_usage DEFAULT;

CREATE VIEW llm_usage.v_successful_calls AS
SELECT id, user_id, service_type, provider, model,
       input_tokens, output_tokens, total_tokens,
       input_cost, output_cost, total_cost, latency_ms, created_at
FROM llm_usage.api_usage
WHERE status = 'success';
COMMENT ON VIEW llm_usage.v_successful_calls IS 'API calls that returned a result (billable usage).';

-- ---------------------------------------------------------------------------------------
-- Materialized views
-- ---------------------------------------------------------------------------------------

CREATE MATERIALIZED VIEW llm_usage.mv_daily_metrics AS
SELECT (u.created_at AT TIME ZONE 'UTC')::date                   AS usage_date,
       count(*)                                                  AS total_requests,
       count(*) FILTER (WHERE u.status = 'success')              AS successful_requests,
       count(*) FILTER (WHERE u.status <> 'success')             AS failed_requests,
       round(100.0 * count(*) FILTER (WHERE u.status = 'success') / count(*), 2) AS success_rate,
       count(DISTINCT u.user_id)                                 AS unique_users,
       sum(u.input_tokens)                                       AS input_tokens,
       sum(u.output_tokens)                                      AS output_tokens,
       sum(u.total_tokens)                                       AS total_tokens,
       sum(u.total_cost)                                         AS total_cost,
       round(avg(u.latency_ms), 1)                               AS avg_latency_ms
FROM llm_usage.api_usage u
WHERE u.created_at >= now() - interval '30 days'
GROUP BY 1
WITH DATA;
CREATE UNIQUE INDEX mv_daily_metrics_uq ON llm_usage.mv_daily_metrics (usage_date);
COMMENT ON MATERIALIZED VIEW llm_usage.mv_daily_metrics IS
    'LLM analytics dashboard (useDailyMetrics): daily requests, tokens, cost and latency, last 30 days. Seed policy: on every api_usage insert/update, manual button, refresh-if-stale after 5 min.';

CREATE MATERIALIZED VIEW llm_usage.mv_provider_performance AS
SELECT u.provider,
       count(*)                                                    AS total_requests,
       count(*) FILTER (WHERE u.status = 'success')                AS successful_requests,
       count(*) FILTER (WHERE u.status = 'error')                  AS errors,
       count(*) FILTER (WHERE u.status = 'timeout')                AS timeouts,
       count(*) FILTER (WHERE u.status = 'rate_limited')           AS rate_limited,
       round(100.0 * count(*) FILTER (WHERE u.status = 'success') / count(*), 2) AS success_rate,
       round(avg(u.latency_ms), 1)                                 AS avg_latency_ms,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY u.latency_ms)   AS p50_latency_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY u.latency_ms)  AS p95_latency_ms,
       sum(u.total_cost)                                           AS total_cost,
       round(sum(u.total_cost) / count(*), 6)                      AS avg_cost_per_request
FROM llm_usage.api_usage u
WHERE u.created_at >= now() - interval '30 days'
GROUP BY u.provider
WITH DATA;
CREATE UNIQUE INDEX mv_provider_performance_uq ON llm_usage.mv_provider_performance (provider);
COMMENT ON MATERIALIZED VIEW llm_usage.mv_provider_performance IS
    'LLM analytics dashboard (useProviderPerformance): provider comparison of reliability, latency percentiles and cost, last 30 days. Seed policy: on insert/update, manual button.';

-- Through a plain view: only successful (billable) calls count towards model costs.
CREATE MATERIALIZED VIEW llm_usage.mv_model_costs AS
SELECT s.provider,
       s.model,
       s.service_type,
       count(*)                                                   AS requests,
       sum(s.input_tokens)                                        AS input_tokens,
       sum(s.output_tokens)                                       AS output_tokens,
       sum(s.input_cost)                                          AS input_cost,
       sum(s.output_cost)                                         AS output_cost,
       sum(s.total_cost)                                          AS total_cost,
       round(sum(s.total_cost) / count(*), 6)                     AS avg_cost_per_request,
       round(1000 * sum(s.total_cost) / nullif(sum(s.total_tokens), 0), 6) AS cost_per_1k_tokens,
       p.input_per_1k_usd                                         AS list_input_per_1k_usd,
       p.output_per_1k_usd                                        AS list_output_per_1k_usd
FROM llm_usage.v_successful_calls s
LEFT JOIN llm_usage.model_pricing p ON p.provider = s.provider AND p.model = s.model
GROUP BY s.provider, s.model, s.service_type, p.input_per_1k_usd, p.output_per_1k_usd
WITH DATA;
CREATE UNIQUE INDEX mv_model_costs_uq ON llm_usage.mv_model_costs (provider, model, service_type);
COMMENT ON MATERIALIZED VIEW llm_usage.mv_model_costs IS
    'LLM analytics dashboard (useExecutiveSummary): cost breakdown per provider, model and service of successful calls, with list prices. Seed policy: on insert/update, manual button.';

-- Deliberately WITHOUT a unique index (the seed never added one): only a plain index for the
-- dashboard's "WHERE model = ..." lookups, so this MV cannot be refreshed CONCURRENTLY.
CREATE MATERIALIZED VIEW llm_usage.mv_model_usage AS
SELECT u.provider,
       u.model,
       count(*)                                                   AS request_count,
       count(DISTINCT u.user_id)                                  AS unique_users,
       round(avg(u.input_tokens), 1)                              AS avg_input_tokens,
       round(avg(u.output_tokens), 1)                             AS avg_output_tokens,
       sum(u.total_tokens)                                        AS total_tokens,
       round(avg(u.latency_ms), 1)                                AS avg_latency_ms,
       round(100.0 * count(*) FILTER (WHERE u.status = 'success') / count(*), 2) AS success_rate,
       min(u.created_at)                                          AS first_used_at,
       max(u.created_at)                                          AS last_used_at
FROM llm_usage.api_usage u
GROUP BY u.provider, u.model
WITH DATA;
CREATE INDEX mv_model_usage_model_idx ON llm_usage.mv_model_usage (model);
COMMENT ON MATERIALIZED VIEW llm_usage.mv_model_usage IS
    'LLM analytics dashboard (useModelUsage): requests, users, tokens and latency per model, all time. No unique index: refreshes block readers. Seed policy: on insert/update, manual button.';
