-- With TimescaleDB: hypertables, compression segmented by device, retention,
-- and 1-minute / 1-hour continuous aggregates named like the plain views.

SELECT create_hypertable('readings', 'ts', chunk_time_interval => INTERVAL '1 day',
                         migrate_data => true, if_not_exists => true);
SELECT create_hypertable('events', 'ts', chunk_time_interval => INTERVAL '7 days',
                         migrate_data => true, if_not_exists => true);

ALTER TABLE readings SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id, metric',
    timescaledb.compress_orderby = 'ts DESC'
);
SELECT add_compression_policy('readings', INTERVAL '7 days', if_not_exists => true);
ALTER TABLE events SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id',
    timescaledb.compress_orderby = 'ts DESC'
);
SELECT add_compression_policy('events', INTERVAL '30 days', if_not_exists => true);

SELECT add_retention_policy('readings', INTERVAL '400 days', if_not_exists => true);
SELECT add_retention_policy('events', INTERVAL '1100 days', if_not_exists => true);

CREATE MATERIALIZED VIEW readings_1m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 minute', ts) AS bucket,
       device_id, metric,
       avg(value) AS avg_value, min(value) AS min_value, max(value) AS max_value,
       sum(value) AS sum_value, count(*) AS samples
FROM readings
GROUP BY bucket, device_id, metric
WITH NO DATA;
SELECT add_continuous_aggregate_policy('readings_1m',
    start_offset => INTERVAL '3 hours', end_offset => INTERVAL '1 minute',
    schedule_interval => INTERVAL '1 minute', if_not_exists => true);

CREATE MATERIALIZED VIEW readings_1h
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', ts) AS bucket,
       device_id, metric,
       avg(value) AS avg_value, min(value) AS min_value, max(value) AS max_value,
       sum(value) AS sum_value, count(*) AS samples
FROM readings
GROUP BY bucket, device_id, metric
WITH NO DATA;
SELECT add_continuous_aggregate_policy('readings_1h',
    start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '30 minutes', if_not_exists => true);
