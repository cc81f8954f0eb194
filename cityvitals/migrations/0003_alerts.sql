-- Rule engine state, alerts (condition and handling dimensions), their audit
-- trail, and city vital signs (DESIGN.md "Alerts: two dimensions").

-- Pending and firing state of every alert the engine holds, so a restart neither
-- re-raises nor forgets them.
CREATE TABLE rule_state (
    fingerprint text PRIMARY KEY,
    rule        text NOT NULL,
    device_id   text,
    district    text,
    state       text NOT NULL CHECK (state IN ('pending', 'firing')),
    level       smallint NOT NULL CHECK (level BETWEEN 1 AND 4),
    since       timestamptz NOT NULL,
    last_event  timestamptz,
    parent      text,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE rule_health (
    rule          text PRIMARY KEY,
    evaluations   bigint NOT NULL DEFAULT 0,
    errors        bigint NOT NULL DEFAULT 0,
    last_error    text,
    last_error_at timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- level: 1 blue, 2 yellow, 3 orange, 4 red. condition: pending, firing, resolved.
-- handling: new, acknowledged, dispatched, handled, closed.
CREATE TABLE alerts (
    id          bigserial PRIMARY KEY,
    fingerprint text NOT NULL,
    rule        text NOT NULL,
    domain      text NOT NULL,
    device_id   text,
    district    text,
    level       smallint NOT NULL CHECK (level BETWEEN 1 AND 4),
    max_level   smallint NOT NULL CHECK (max_level BETWEEN 1 AND 4),
    condition   text NOT NULL CHECK (condition IN ('pending', 'firing', 'resolved')),
    handling    text NOT NULL DEFAULT 'new'
                CHECK (handling IN ('new', 'acknowledged', 'dispatched', 'handled', 'closed')),
    summary     text NOT NULL DEFAULT '',
    labels      jsonb NOT NULL DEFAULT '{}'::jsonb,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb,
    parent      text,
    started_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    resolved_at timestamptz,
    closed_at   timestamptz
);
-- One open alert per fingerprint: a condition firing again while its alert is open
-- updates it; once closed, a new firing opens a new alert.
CREATE UNIQUE INDEX alerts_one_open ON alerts (fingerprint) WHERE handling <> 'closed';
CREATE INDEX alerts_started ON alerts (started_at);
CREATE INDEX alerts_open_district ON alerts (district, domain) WHERE handling <> 'closed';

CREATE TABLE alert_events (
    id         bigserial PRIMARY KEY,
    alert_id   bigint NOT NULL REFERENCES alerts (id),
    at         timestamptz NOT NULL,
    actor      text NOT NULL,
    dimension  text NOT NULL CHECK (dimension IN ('condition', 'handling')),
    from_state text,
    to_state   text NOT NULL,
    level      smallint,
    note       text NOT NULL DEFAULT ''
);
CREATE INDEX alert_events_alert ON alert_events (alert_id, at);

-- City vital signs per scope (a district, or 'city') and domain, as a time series.
CREATE TABLE vital_signs (
    ts         timestamptz NOT NULL,
    scope      text NOT NULL,
    domain     text NOT NULL,
    level      smallint NOT NULL CHECK (level BETWEEN 0 AND 4),
    indicators jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (scope, domain, ts)
);
CREATE INDEX vital_signs_ts ON vital_signs (ts);
