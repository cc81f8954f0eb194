-- Without TimescaleDB: the same names as the continuous aggregates, as views.
-- A BRIN index keeps time-range scans cheap at little cost to inserts.

CREATE INDEX readings_ts_brin ON readings USING brin (ts);
CREATE INDEX events_ts ON events (ts);

CREATE VIEW readings_1m AS
SELECT date_bin(INTERVAL '1 minute', ts, TIMESTAMPTZ '2000-01-01') AS bucket,
       device_id, metric,
       avg(value) AS avg_value, min(value) AS min_value, max(value) AS max_value,
       sum(value) AS sum_value, count(*) AS samples
FROM readings
GROUP BY 1, device_id, metric;

CREATE VIEW readings_1h AS
SELECT date_bin(INTERVAL '1 hour', ts, TIMESTAMPTZ '2000-01-01') AS bucket,
       device_id, metric,
       avg(value) AS avg_value, min(value) AS min_value, max(value) AS max_value,
       sum(value) AS sum_value, count(*) AS samples
FROM readings
GROUP BY 1, device_id, metric;
