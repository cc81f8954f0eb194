-- Grafana (dashboards/): a read-only role for its datasource, and the helpers the
-- dashboards query. The same on plain PostgreSQL and TimescaleDB.

-- The role Grafana's datasource logs in as. Roles belong to the cluster, not the
-- database, so this is idempotent (several databases of one cluster, test runs).
-- It can log in only when a password is given: `cityvitals db upgrade` run with
-- PGOPTIONS='-c cityvitals.grafana_password=…' (docker-compose.yml's `migrate`
-- service does) sets it; otherwise it stays NOLOGIN until an administrator runs
-- ALTER ROLE cityvitals_grafana LOGIN PASSWORD '…'.
DO $$
DECLARE
    password text := coalesce(current_setting('cityvitals.grafana_password', true), '');
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cityvitals_grafana') THEN
        CREATE ROLE cityvitals_grafana NOLOGIN;
    END IF;
    IF password <> '' THEN
        EXECUTE format('ALTER ROLE cityvitals_grafana LOGIN PASSWORD %L', password);
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO cityvitals_grafana', current_database());
END
$$;
-- Grafana's SQL datasources run whatever a dashboard editor types: a read-only
-- session and a time limit, whatever the datasource's own settings.
ALTER ROLE cityvitals_grafana SET default_transaction_read_only = on;
ALTER ROLE cityvitals_grafana SET statement_timeout = '30s';

GRANT USAGE ON SCHEMA public TO cityvitals_grafana;
GRANT SELECT ON devices, readings, events, device_status, ingest_stats,
                readings_1m, readings_1h,
                alerts, alert_events, rule_state, rule_health, vital_signs,
                silences, alert_handling_times
    TO cityvitals_grafana;
-- Dead letters without their payloads (raw device bytes may carry anything).
GRANT SELECT (id, received_at, topic, payload_size, reason, detail, device_id)
    ON dead_letters TO cityvitals_grafana;
-- Never users or api_tokens.

-- A rule's domain -> the vital-sign domain its alerts count in (rules/vitals.py
-- RULE_DOMAINS; tests/integration/test_dashboards_sql.py keeps the two equal).
CREATE FUNCTION cityvitals_vital_domain(rule_domain text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE rule_domain
        WHEN 'hydrology' THEN 'flood'
        WHEN 'meteorology' THEN 'flood'
        WHEN 'flood' THEN 'flood'
        WHEN 'drainage' THEN 'drainage'
        WHEN 'air' THEN 'air'
        WHEN 'elevator' THEN 'elevators'
        WHEN 'elevators' THEN 'elevators'
        WHEN 'noise' THEN 'noise'
        WHEN 'device_health' THEN 'device_health'
    END
$$;

-- The vital-sign domains in display order (rules/vitals.py DOMAINS).
CREATE FUNCTION cityvitals_vital_domains() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ARRAY['flood', 'drainage', 'air', 'elevators', 'noise', 'device_health']
$$;

-- The latest stored vital sign of every scope (each district with devices, and
-- 'city') and domain: one index probe per pair instead of a scan of the history.
CREATE VIEW vital_signs_latest AS
SELECT s.scope, d.domain, d.ord AS domain_order, v.level, v.indicators, v.ts
FROM (SELECT DISTINCT district AS scope FROM devices UNION SELECT 'city') s
CROSS JOIN unnest(cityvitals_vital_domains()) WITH ORDINALITY AS d (domain, ord)
CROSS JOIN LATERAL (
    SELECT vs.level, vs.indicators, vs.ts FROM vital_signs vs
    WHERE vs.scope = s.scope AND vs.domain = d.domain
    ORDER BY vs.ts DESC LIMIT 1
) v;

-- Every device with the worst level among its open (not closed) alerts, 0 when it
-- has none: the wall screen's map.
CREATE VIEW device_alert_levels AS
SELECT d.device_id, d.name, d.profile, d.district, d.lat, d.lon,
       coalesce(max(a.level), 0)::smallint AS level,
       count(a.id) AS open_alerts,
       count(a.id) FILTER (WHERE a.condition = 'firing') AS firing_alerts
FROM devices d
LEFT JOIN alerts a ON a.device_id = d.device_id AND a.handling <> 'closed'
GROUP BY d.device_id;

-- The latest reading of one metric of every device that has one: an index probe
-- (readings' primary key) per device, fast whatever the history's length.
CREATE FUNCTION latest_readings(p_metric text)
RETURNS TABLE (device_id text, ts timestamptz, value double precision)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT d.device_id, r.ts, r.value
    FROM devices d
    CROSS JOIN LATERAL (
        SELECT rd.ts, rd.value FROM readings rd
        WHERE rd.device_id = d.device_id AND rd.metric = p_metric
        ORDER BY rd.ts DESC LIMIT 1
    ) r
$$;

-- One device's readings of some metrics between two instants, at the grain a
-- panel needs: `p_interval_ms` is Grafana's $__interval_ms (the time one point
-- of the panel stands for). Rows are (bucket start, metric, mean, min, max, sum,
-- samples); panels regroup them with $__timeGroup and weight means by samples.
--
-- The source: hourly rollups when a point stands for an hour or more, or the
-- range is longer than 3 days (a month is then 720 rows per device and metric,
-- a year 8,760); with TimescaleDB the 1-minute continuous aggregate when a
-- point stands for a minute or more; else the raw readings. The conditions are
-- constants once the function is inlined into the panel's query, so only one
-- branch runs.
--
-- On plain PostgreSQL the rollups of 0002 are views that group the whole
-- readings table: a device or time filter cannot reach the readings' indexes
-- through their GROUP BY, so every query over them reads all readings. There the
-- hourly rollup is materialized instead: the table readings_hourly, brought up to
-- date by cityvitals_refresh_rollups() (the platform calls it every few minutes,
-- `cityvitals db refresh-rollups` by hand), and readings_series adds the hours
-- not yet materialized from the raw readings, like a real-time aggregate. Below
-- an hour it aggregates the raw readings through their primary key.
DO $do$
BEGIN
    IF EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb') THEN
        EXECUTE $fn$
        CREATE FUNCTION readings_series(
            p_device text, p_metrics text[], p_from timestamptz, p_to timestamptz,
            p_interval_ms bigint
        ) RETURNS TABLE (
            t timestamptz, metric text, avg_value double precision, min_value double precision,
            max_value double precision, sum_value double precision, samples bigint
        )
        LANGUAGE sql STABLE PARALLEL SAFE AS $body$
            SELECT h.bucket, h.metric, h.avg_value, h.min_value, h.max_value, h.sum_value,
                   h.samples
            FROM readings_1h h
            WHERE (p_interval_ms >= 3600000 OR p_to - p_from > INTERVAL '3 days')
              AND h.device_id = p_device AND h.metric = ANY (p_metrics)
              AND h.bucket >= date_bin(INTERVAL '1 hour', p_from, TIMESTAMPTZ '2000-01-01 00:00:00+00')
              AND h.bucket <= p_to
            UNION ALL
            SELECT m.bucket, m.metric, m.avg_value, m.min_value, m.max_value, m.sum_value,
                   m.samples
            FROM readings_1m m
            WHERE NOT (p_interval_ms >= 3600000 OR p_to - p_from > INTERVAL '3 days')
              AND p_interval_ms >= 60000
              AND m.device_id = p_device AND m.metric = ANY (p_metrics)
              AND m.bucket >= date_bin(INTERVAL '1 minute', p_from, TIMESTAMPTZ '2000-01-01 00:00:00+00')
              AND m.bucket <= p_to
            UNION ALL
            SELECT r.ts, r.metric, r.value, r.value, r.value, r.value, 1::bigint
            FROM readings r
            WHERE NOT (p_interval_ms >= 3600000 OR p_to - p_from > INTERVAL '3 days')
              AND p_interval_ms < 60000
              AND r.device_id = p_device AND r.metric = ANY (p_metrics)
              AND r.ts >= p_from AND r.ts <= p_to
        $body$
        $fn$;
    ELSE
        CREATE TABLE readings_hourly (
            bucket    timestamptz NOT NULL,
            device_id text NOT NULL,
            metric    text NOT NULL,
            avg_value double precision NOT NULL,
            min_value double precision NOT NULL,
            max_value double precision NOT NULL,
            sum_value double precision NOT NULL,
            samples   bigint NOT NULL,
            PRIMARY KEY (device_id, metric, bucket)
        );
        CREATE INDEX readings_hourly_bucket ON readings_hourly USING brin (bucket);
        COMMENT ON TABLE readings_hourly IS
            'Plain PostgreSQL only: readings_1h materialized up to rollup_state.materialized_until.';
        CREATE TABLE rollup_state (
            name               text PRIMARY KEY,
            materialized_until timestamptz NOT NULL,
            refreshed_at       timestamptz
        );
        INSERT INTO rollup_state (name, materialized_until) VALUES ('readings_hourly', '-infinity');

        -- Materialize the hours completed by p_until that are not yet, and again the
        -- p_lookback before them (readings that arrive late). Returns the rows written.
        -- Readings older than that when they arrive stay out of readings_hourly, as
        -- they stay out of a continuous aggregate outside its refresh window.
        EXECUTE $fn$
        CREATE FUNCTION cityvitals_refresh_rollups(
            p_until timestamptz DEFAULT now(), p_lookback interval DEFAULT INTERVAL '2 hours'
        ) RETURNS bigint
        LANGUAGE plpgsql AS $body$
        DECLARE
            upto timestamptz := date_bin(INTERVAL '1 hour', p_until,
                                         TIMESTAMPTZ '2000-01-01 00:00:00+00');
            done timestamptz;
            since timestamptz;
            written bigint;
        BEGIN
            SELECT materialized_until INTO done FROM rollup_state
            WHERE name = 'readings_hourly' FOR UPDATE;
            IF upto <= done THEN
                RETURN 0;
            END IF;
            since := CASE WHEN done = '-infinity' THEN done ELSE done - p_lookback END;
            DELETE FROM readings_hourly WHERE bucket >= since AND bucket < upto;
            INSERT INTO readings_hourly
            SELECT date_bin(INTERVAL '1 hour', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
                   device_id, metric, avg(value), min(value), max(value), sum(value), count(*)
            FROM readings
            WHERE ts >= since AND ts < upto
            GROUP BY 1, 2, 3;
            GET DIAGNOSTICS written = ROW_COUNT;
            UPDATE rollup_state SET materialized_until = upto, refreshed_at = now()
            WHERE name = 'readings_hourly';
            RETURN written;
        END
        $body$
        $fn$;

        EXECUTE $fn$
        CREATE FUNCTION readings_series(
            p_device text, p_metrics text[], p_from timestamptz, p_to timestamptz,
            p_interval_ms bigint
        ) RETURNS TABLE (
            t timestamptz, metric text, avg_value double precision, min_value double precision,
            max_value double precision, sum_value double precision, samples bigint
        )
        LANGUAGE sql STABLE PARALLEL SAFE AS $body$
            SELECT h.bucket, h.metric, h.avg_value, h.min_value, h.max_value, h.sum_value,
                   h.samples
            FROM readings_hourly h
            WHERE (p_interval_ms >= 3600000 OR p_to - p_from > INTERVAL '3 days')
              AND h.device_id = p_device AND h.metric = ANY (p_metrics)
              AND h.bucket >= date_bin(INTERVAL '1 hour', p_from, TIMESTAMPTZ '2000-01-01 00:00:00+00')
              AND h.bucket <= p_to
              AND h.bucket < (SELECT materialized_until FROM rollup_state
                              WHERE name = 'readings_hourly')
            UNION ALL
            SELECT date_bin(CASE WHEN p_interval_ms >= 3600000
                                      OR p_to - p_from > INTERVAL '3 days'
                                 THEN INTERVAL '1 hour'
                                 ELSE make_interval(secs => greatest(p_interval_ms, 1000) / 1000.0)
                            END, r.ts, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
                   r.metric, avg(r.value), min(r.value), max(r.value), sum(r.value), count(*)
            FROM readings r
            WHERE r.device_id = p_device AND r.metric = ANY (p_metrics)
              AND r.ts >= p_from AND r.ts <= p_to
              AND (NOT (p_interval_ms >= 3600000 OR p_to - p_from > INTERVAL '3 days')
                   OR r.ts >= (SELECT materialized_until FROM rollup_state
                               WHERE name = 'readings_hourly'))
            GROUP BY 1, 2
        $body$
        $fn$;
        REVOKE EXECUTE ON FUNCTION cityvitals_refresh_rollups(timestamptz, interval) FROM PUBLIC;
        GRANT SELECT ON readings_hourly, rollup_state TO cityvitals_grafana;
    END IF;
END
$do$;

-- China AQI (HJ 633-2012 and HJ 633-2026) in SQL, for the air-quality dashboard:
-- the engine derives `aqi` for its rules but stores none, so Grafana scores the
-- stored hourly means itself. Breakpoints as rules/aqi.py BREAKPOINTS (the tests
-- compare the two functions on a grid of concentrations), at the IAQI values
-- 0, 50, 100, 150, 200, 300, 400, 500; HJ 633-2026 lowers the PM10 and PM2.5
-- IAQI-100 breakpoints to 120 and 60.
CREATE FUNCTION cityvitals_aqi_breakpoints(p_rules text, p_pollutant text, p_averaging text)
RETURNS numeric[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE p_pollutant || ' ' || p_averaging
        WHEN 'so2 24h' THEN '{0, 50, 150, 475, 800, 1600, 2100, 2620}'::numeric[]
        WHEN 'so2 1h' THEN '{0, 150, 500, 650, 800}'::numeric[]
        WHEN 'no2 24h' THEN '{0, 40, 80, 180, 280, 565, 750, 940}'::numeric[]
        WHEN 'no2 1h' THEN '{0, 100, 200, 700, 1200, 2340, 3090, 3840}'::numeric[]
        WHEN 'co 24h' THEN '{0, 2, 4, 14, 24, 36, 48, 60}'::numeric[]
        WHEN 'co 1h' THEN '{0, 5, 10, 35, 60, 90, 120, 150}'::numeric[]
        WHEN 'o3 8h' THEN '{0, 100, 160, 215, 265, 800}'::numeric[]
        WHEN 'o3 1h' THEN '{0, 160, 200, 300, 400, 800, 1000, 1200}'::numeric[]
        WHEN 'pm10 24h' THEN CASE p_rules
            WHEN '2026' THEN '{0, 50, 120, 250, 350, 420, 500, 600}'::numeric[]
            WHEN '2012' THEN '{0, 50, 150, 250, 350, 420, 500, 600}'::numeric[] END
        WHEN 'pm2_5 24h' THEN CASE p_rules
            WHEN '2026' THEN '{0, 35, 60, 115, 150, 250, 350, 500}'::numeric[]
            WHEN '2012' THEN '{0, 35, 75, 115, 150, 250, 350, 500}'::numeric[] END
    END
$$;

-- The rule set of an observation: HJ 633-2026 from 2026-03-01 China time.
CREATE FUNCTION cityvitals_aqi_rules(at timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN at >= TIMESTAMPTZ '2026-03-01 00:00:00+08' THEN '2026' ELSE '2012' END
$$;

-- One IAQI from a breakpoint array `b` (at the IAQI values 0, 50, 100, 150, 200,
-- 300, 400, 500) and a concentration `x`: linear between breakpoints, rounded up;
-- `above` beyond the top breakpoint. A single expression, so PostgreSQL inlines it
-- into air_quality_hourly (millions of calls over a month of stations).
CREATE FUNCTION cityvitals_iaqi_in(b numeric[], x numeric, above integer) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN x IS NULL THEN NULL
        WHEN x > b[cardinality(b)] THEN above
        WHEN x <= b[1] THEN 0
        WHEN x = b[width_bucket(x, b)] THEN ('{0, 50, 100, 150, 200, 300, 400, 500}'::integer[])[width_bucket(x, b)]
        -- Multiply before dividing: exact whenever the true value is an integer.
        ELSE ceil(((('{0, 50, 100, 150, 200, 300, 400, 500}'::integer[])[width_bucket(x, b) + 1] - ('{0, 50, 100, 150, 200, 300, 400, 500}'::integer[])[width_bucket(x, b)]) * (x - b[width_bucket(x, b)]))
                  / (b[width_bucket(x, b) + 1] - b[width_bucket(x, b)]) + ('{0, 50, 100, 150, 200, 300, 400, 500}'::integer[])[width_bucket(x, b)])::integer
    END
$$;

-- One IAQI by rule set, pollutant and averaging: above the top breakpoint 500,
-- except SO2 1h and O3 8h above 800 (2012: not scored, NULL; 2026: 200 and 300).
-- HJ 633-2026 rounds the concentration first (CO to 0.1 mg/m³, others to 1 µg/m³).
CREATE FUNCTION cityvitals_iaqi(
    p_rules text, p_pollutant text, p_averaging text, p_value double precision
) RETURNS integer
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    bps numeric[] := cityvitals_aqi_breakpoints(p_rules, p_pollutant, p_averaging);
    v numeric;
BEGIN
    IF bps IS NULL OR p_rules NOT IN ('2012', '2026') THEN
        RAISE EXCEPTION 'no AQI breakpoints for % % %', p_rules, p_pollutant, p_averaging;
    END IF;
    IF p_value IS NULL OR p_value < 0 OR p_value = 'NaN'::double precision
       OR p_value = 'Infinity'::double precision THEN
        RETURN NULL;
    END IF;
    v := p_value::numeric;
    IF p_rules = '2026' THEN
        v := round(v, CASE WHEN p_pollutant = 'co' THEN 1 ELSE 0 END);
    END IF;
    RETURN cityvitals_iaqi_in(bps, v, CASE
        WHEN (p_pollutant, p_averaging) NOT IN (('so2', '1h'), ('o3', '8h')) THEN 500
        WHEN p_rules = '2026' THEN CASE p_pollutant WHEN 'so2' THEN 200 ELSE 300 END
    END);
END
$$;

-- Hourly AQI of air stations between two instants (hours starting in [p_from, p_to)),
-- from hourly means (readings_series at 1 h): the hourly report of HJ 633. SO2, NO2, CO and O3 are
-- scored on their 1-hour means; PM2.5 and PM10 on their 24-hour moving means under
-- the 2012 rules and on their 1-hour means under the 2026 rules; SO2 above 800 under
-- 2012 on its 24-hour moving mean. The rule set is the one of the hour's end.
-- The primary pollutant(s) (display names, comma-separated) only when AQI > 50.
-- p_devices: only these stations (NULL: every station of p_profiles).
CREATE FUNCTION air_quality_hourly(
    p_from timestamptz, p_to timestamptz, p_profiles text[] DEFAULT ARRAY['air_quality'],
    p_devices text[] DEFAULT NULL
) RETURNS TABLE (
    bucket timestamptz, device_id text, aqi integer, primary_pollutant text,
    iaqi_pm2_5 integer, iaqi_pm10 integer, iaqi_so2 integer, iaqi_no2 integer,
    iaqi_co integer, iaqi_o3 integer
)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
WITH hourly AS (
    SELECT h.bucket, d.device_id,
           avg(h.avg_value) FILTER (WHERE h.metric = 'pm2_5') AS pm2_5,
           avg(h.avg_value) FILTER (WHERE h.metric = 'pm10') AS pm10,
           avg(h.avg_value) FILTER (WHERE h.metric = 'so2') AS so2,
           avg(h.avg_value) FILTER (WHERE h.metric = 'no2') AS no2,
           avg(h.avg_value) FILTER (WHERE h.metric = 'co') AS co,
           avg(h.avg_value) FILTER (WHERE h.metric = 'o3') AS o3
    FROM devices d
    CROSS JOIN LATERAL (
        SELECT s.t AS bucket, s.metric, s.sum_value / s.samples AS avg_value
        FROM readings_series(d.device_id, ARRAY['pm2_5', 'pm10', 'so2', 'no2', 'co', 'o3'],
                             p_from - INTERVAL '23 hours', p_to, 3600000) s
        WHERE s.t >= p_from - INTERVAL '23 hours' AND s.t < p_to
    ) h
    WHERE d.profile = ANY (p_profiles) AND (p_devices IS NULL OR d.device_id = ANY (p_devices))
    GROUP BY h.bucket, d.device_id
), moving AS (
    -- 24-hour moving means only where the 2012 rules need them (hours before the
    -- 2026 rules; their windows hold only such hours).
    SELECT hourly.*, '2026' AS rules, NULL::double precision AS pm2_5_24h,
           NULL::double precision AS pm10_24h, NULL::double precision AS so2_24h
    FROM hourly
    WHERE cityvitals_aqi_rules(hourly.bucket + INTERVAL '1 hour') = '2026'
    UNION ALL
    SELECT hourly.*, '2012',
           avg(pm2_5) OVER w, avg(pm10) OVER w, avg(so2) OVER w
    FROM hourly
    WHERE cityvitals_aqi_rules(hourly.bucket + INTERVAL '1 hour') = '2012'
    WINDOW w AS (PARTITION BY hourly.device_id ORDER BY hourly.bucket
                 RANGE BETWEEN INTERVAL '23 hours' PRECEDING AND CURRENT ROW)
), scored AS MATERIALIZED (
    -- Materialized: each IAQI is computed once, not once per reference below.
    -- cityvitals_iaqi's rules, spelt out with constant breakpoints so that
    -- cityvitals_iaqi_in is inlined (tests compare the result with rules/aqi.py).
    SELECT m.bucket, m.device_id,
           CASE WHEN m.rules = '2026'
                THEN cityvitals_iaqi_in('{0, 35, 60, 115, 150, 250, 350, 500}', round(m.pm2_5::numeric), 500)
                ELSE cityvitals_iaqi_in('{0, 35, 75, 115, 150, 250, 350, 500}', m.pm2_5_24h::numeric, 500)
           END AS i_pm2_5,
           CASE WHEN m.rules = '2026'
                THEN cityvitals_iaqi_in('{0, 50, 120, 250, 350, 420, 500, 600}', round(m.pm10::numeric), 500)
                ELSE cityvitals_iaqi_in('{0, 50, 150, 250, 350, 420, 500, 600}', m.pm10_24h::numeric, 500)
           END AS i_pm10,
           CASE WHEN m.rules = '2026'
                THEN cityvitals_iaqi_in('{0, 150, 500, 650, 800}', round(m.so2::numeric), 200)
                WHEN m.so2 > 800
                THEN cityvitals_iaqi_in('{0, 50, 150, 475, 800, 1600, 2100, 2620}', m.so2_24h::numeric, 500)
                ELSE cityvitals_iaqi_in('{0, 150, 500, 650, 800}', m.so2::numeric, NULL)
           END AS i_so2,
           cityvitals_iaqi_in('{0, 100, 200, 700, 1200, 2340, 3090, 3840}',
                              CASE WHEN m.rules = '2026' THEN round(m.no2::numeric)
                                   ELSE m.no2::numeric END, 500) AS i_no2,
           cityvitals_iaqi_in('{0, 5, 10, 35, 60, 90, 120, 150}',
                              CASE WHEN m.rules = '2026' THEN round(m.co::numeric, 1)
                                   ELSE m.co::numeric END, 500) AS i_co,
           cityvitals_iaqi_in('{0, 160, 200, 300, 400, 800, 1000, 1200}',
                              CASE WHEN m.rules = '2026' THEN round(m.o3::numeric)
                                   ELSE m.o3::numeric END, 500) AS i_o3
    FROM moving m
    WHERE m.bucket >= p_from
), best AS (
    SELECT s.*, greatest(s.i_pm2_5, s.i_pm10, s.i_so2, s.i_no2, s.i_co, s.i_o3) AS aqi
    FROM scored s
)
SELECT b.bucket, b.device_id, b.aqi,
       CASE WHEN b.aqi > 50 THEN concat_ws(', ',
           CASE WHEN b.i_pm2_5 = b.aqi THEN 'PM2.5' END,
           CASE WHEN b.i_pm10 = b.aqi THEN 'PM10' END,
           CASE WHEN b.i_so2 = b.aqi THEN 'SO2' END,
           CASE WHEN b.i_no2 = b.aqi THEN 'NO2' END,
           CASE WHEN b.i_co = b.aqi THEN 'CO' END,
           CASE WHEN b.i_o3 = b.aqi THEN 'O3' END) END,
       b.i_pm2_5, b.i_pm10, b.i_so2, b.i_no2, b.i_co, b.i_o3
FROM best b
WHERE b.aqi IS NOT NULL
$$;

-- Noise (GB 3096-2008): whether an instant is in a monitor's day or night period
-- (day from its day_start, default 06:00, to its night_start, default 22:00,
-- local time in `tz`, the platform's CITYVITALS_TIMEZONE), and its LAeq limit
-- then: its own day_limit_db / night_limit_db, else its zone's. Zone limits as
-- rules/derived.py NOISE_LIMITS (the tests compare them).
-- Single expressions, so that PostgreSQL inlines them into the dashboards' queries
-- (a month of hourly means of every monitor is a million calls).
CREATE FUNCTION cityvitals_noise_period(
    attrs jsonb, at timestamptz, tz text DEFAULT 'Asia/Shanghai'
) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN CASE
            WHEN coalesce(nullif(attrs ->> 'day_start', ''), '06:00')::time
                 <= coalesce(nullif(attrs ->> 'night_start', ''), '22:00')::time
            THEN (at AT TIME ZONE tz)::time
                     >= coalesce(nullif(attrs ->> 'day_start', ''), '06:00')::time
                 AND (at AT TIME ZONE tz)::time
                     < coalesce(nullif(attrs ->> 'night_start', ''), '22:00')::time
            ELSE (at AT TIME ZONE tz)::time
                     >= coalesce(nullif(attrs ->> 'day_start', ''), '06:00')::time
                 OR (at AT TIME ZONE tz)::time
                     < coalesce(nullif(attrs ->> 'night_start', ''), '22:00')::time
        END
        THEN 'day' ELSE 'night' END
$$;

CREATE FUNCTION cityvitals_noise_limit(
    attrs jsonb, at timestamptz, tz text DEFAULT 'Asia/Shanghai'
) RETURNS double precision
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE cityvitals_noise_period(attrs, at, tz)
        WHEN 'day' THEN coalesce(
            nullif(attrs ->> 'day_limit_db', '')::double precision,
            CASE attrs ->> 'zone' WHEN '0' THEN 50 WHEN '1' THEN 55 WHEN '2' THEN 60
                 WHEN '3' THEN 65 WHEN '4a' THEN 70 WHEN '4b' THEN 70 END)
        ELSE coalesce(
            nullif(attrs ->> 'night_limit_db', '')::double precision,
            CASE attrs ->> 'zone' WHEN '0' THEN 40 WHEN '1' THEN 45 WHEN '2' THEN 50
                 WHEN '3' THEN 55 WHEN '4a' THEN 55 WHEN '4b' THEN 60 END)
    END
$$;

GRANT EXECUTE ON FUNCTION cityvitals_vital_domain(text), cityvitals_vital_domains(),
    latest_readings(text), readings_series(text, text[], timestamptz, timestamptz, bigint), cityvitals_aqi_rules(timestamptz),
    cityvitals_aqi_breakpoints(text, text, text),
    cityvitals_iaqi_in(numeric[], numeric, integer),
    cityvitals_iaqi(text, text, text, double precision),
    air_quality_hourly(timestamptz, timestamptz, text[], text[]),
    cityvitals_noise_period(jsonb, timestamptz, text),
    cityvitals_noise_limit(jsonb, timestamptz, text)
    TO cityvitals_grafana;
GRANT SELECT ON vital_signs_latest, device_alert_levels TO cityvitals_grafana;
