-- Core tables of DESIGN.md "Storage". Plain PostgreSQL; 0002 adds TimescaleDB
-- features when the extension is available.

CREATE TABLE devices (
    device_id   text PRIMARY KEY,
    profile     text NOT NULL,
    district    text NOT NULL,
    name        text NOT NULL DEFAULT '',
    lat         double precision CHECK (lat BETWEEN -90 AND 90),
    lon         double precision CHECK (lon BETWEEN -180 AND 180),
    attributes  jsonb NOT NULL DEFAULT '{}'::jsonb,
    provisional boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX devices_district_profile ON devices (district, profile);
COMMENT ON COLUMN devices.provisional IS
    'Registered automatically from an MQTT topic because the device was not in the registry.';

-- One row per (device, metric, instant): narrow, so a new profile needs no DDL.
-- quality is a bit set: 1 out of physical range, 2 timestamp is receive time,
-- 4 timestamp in the future (clock skew). 0 is a clean reading.
CREATE TABLE readings (
    ts        timestamptz NOT NULL,
    device_id text NOT NULL,
    metric    text NOT NULL,
    value     double precision NOT NULL,
    quality   smallint NOT NULL DEFAULT 0,
    PRIMARY KEY (device_id, metric, ts)
);

CREATE TABLE events (
    ts          timestamptz NOT NULL,
    device_id   text NOT NULL,
    type        text NOT NULL,
    code        integer,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, type, ts)
);

CREATE TABLE device_status (
    device_id  text PRIMARY KEY,
    state      text NOT NULL DEFAULT 'unknown',
    online     boolean,
    detail     jsonb NOT NULL DEFAULT '{}'::jsonb,
    changed_at timestamptz,
    last_seen  timestamptz,
    last_seq   bigint,
    seq_gaps   bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON COLUMN device_status.changed_at IS 'When state last changed (not when it was last repeated).';
COMMENT ON COLUMN device_status.seq_gaps IS 'Readings missing according to the device''s seq counter.';

CREATE TABLE dead_letters (
    id           bigserial PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    topic        text NOT NULL,
    payload      bytea NOT NULL,
    payload_size integer NOT NULL,
    reason       text NOT NULL,
    detail       text NOT NULL DEFAULT '',
    device_id    text
);
CREATE INDEX dead_letters_received_at ON dead_letters (received_at);
CREATE INDEX dead_letters_reason ON dead_letters (reason, received_at);
COMMENT ON COLUMN dead_letters.payload IS
    'The raw bytes as received, cut to dead_letter_keep_bytes when larger (payload_size is the full size).';

-- Heartbeat of each running ingest process, read by `cityvitals status`.
CREATE TABLE ingest_stats (
    instance          text PRIMARY KEY,
    host              text NOT NULL,
    pid               integer NOT NULL,
    started_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    connected         boolean NOT NULL,
    messages          bigint NOT NULL DEFAULT 0,
    readings          bigint NOT NULL DEFAULT 0,
    duplicates        bigint NOT NULL DEFAULT 0,
    events            bigint NOT NULL DEFAULT 0,
    dead_letters      bigint NOT NULL DEFAULT 0,
    out_of_range      bigint NOT NULL DEFAULT 0,
    provisional       bigint NOT NULL DEFAULT 0,
    backlog           integer NOT NULL DEFAULT 0,
    readings_per_s    double precision NOT NULL DEFAULT 0,
    messages_per_s    double precision NOT NULL DEFAULT 0,
    last_error        text
);
