-- The team a handling event concerns: set on dispatch events (to whom the alert
-- went), so the timeline keeps every re-dispatch while alerts.team holds the
-- current one. NULL for every other event.
ALTER TABLE alert_events ADD COLUMN team text;

-- Handling metrics for Grafana: how fast alerts are acknowledged and closed,
-- per team, district and domain, over all alerts (issue 5, item 8).
-- For a dashboard's time range, aggregate `alert_handling_times` (0004) in the
-- panel query instead; these views are the all-time summary.
--
-- Columns of each view, after the grouping column:
--   alerts              alerts started (one row each in `alerts`)
--   open                not closed yet
--   unacknowledged      still `new`
--   acknowledged        with an acknowledged_at
--   closed              closed
--   avg/median/p90_ack_seconds    from started_at to acknowledged_at
--   avg/median/p90_close_seconds  from started_at to closed_at
--   oldest_open_started_at        when the oldest open alert began (NULL: none open)
-- NULL grouping values ('no team yet', area alerts without district) are shown
-- as '(none)' so Grafana can select them.

CREATE VIEW alert_handling_by_team AS
SELECT COALESCE(t.team, '(none)') AS team,
       count(*) AS alerts,
       count(*) FILTER (WHERE t.handling <> 'closed') AS open,
       count(*) FILTER (WHERE t.handling = 'new') AS unacknowledged,
       count(t.acknowledged_at) AS acknowledged,
       count(t.closed_at) AS closed,
       avg(t.ack_seconds) AS avg_ack_seconds,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY t.ack_seconds) AS median_ack_seconds,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY t.ack_seconds) AS p90_ack_seconds,
       avg(t.close_seconds) AS avg_close_seconds,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY t.close_seconds) AS median_close_seconds,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY t.close_seconds) AS p90_close_seconds,
       min(t.started_at) FILTER (WHERE t.handling <> 'closed') AS oldest_open_started_at
FROM alert_handling_times t
GROUP BY 1;

CREATE VIEW alert_handling_by_district AS
SELECT COALESCE(t.district, '(none)') AS district,
       count(*) AS alerts,
       count(*) FILTER (WHERE t.handling <> 'closed') AS open,
       count(*) FILTER (WHERE t.handling = 'new') AS unacknowledged,
       count(t.acknowledged_at) AS acknowledged,
       count(t.closed_at) AS closed,
       avg(t.ack_seconds) AS avg_ack_seconds,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY t.ack_seconds) AS median_ack_seconds,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY t.ack_seconds) AS p90_ack_seconds,
       avg(t.close_seconds) AS avg_close_seconds,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY t.close_seconds) AS median_close_seconds,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY t.close_seconds) AS p90_close_seconds,
       min(t.started_at) FILTER (WHERE t.handling <> 'closed') AS oldest_open_started_at
FROM alert_handling_times t
GROUP BY 1;

CREATE VIEW alert_handling_by_domain AS
SELECT t.domain,
       count(*) AS alerts,
       count(*) FILTER (WHERE t.handling <> 'closed') AS open,
       count(*) FILTER (WHERE t.handling = 'new') AS unacknowledged,
       count(t.acknowledged_at) AS acknowledged,
       count(t.closed_at) AS closed,
       avg(t.ack_seconds) AS avg_ack_seconds,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY t.ack_seconds) AS median_ack_seconds,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY t.ack_seconds) AS p90_ack_seconds,
       avg(t.close_seconds) AS avg_close_seconds,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY t.close_seconds) AS median_close_seconds,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY t.close_seconds) AS p90_close_seconds,
       min(t.started_at) FILTER (WHERE t.handling <> 'closed') AS oldest_open_started_at
FROM alert_handling_times t
GROUP BY 1;
