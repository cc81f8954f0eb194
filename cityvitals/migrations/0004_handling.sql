-- Alert handling (DESIGN.md "Alerts: two dimensions"): who may act, what is
-- silenced, and when each handling step happened.

-- The team an alert is routed to (by the routing tree) or dispatched to (by an
-- operator); team members see and act on their team's alerts only.
ALTER TABLE alerts
    ADD COLUMN team            text,
    ADD COLUMN acknowledged_at timestamptz,
    ADD COLUMN dispatched_at   timestamptz,
    ADD COLUMN handled_at      timestamptz;
CREATE INDEX alerts_open_team ON alerts (team) WHERE handling <> 'closed';

-- role: operator (everything), member (their team's alerts), viewer (read-only).
CREATE TABLE users (
    name         text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.@-]{1,64}$'),
    display_name text NOT NULL DEFAULT '',
    role         text NOT NULL CHECK (role IN ('operator', 'member', 'viewer')),
    team         text,
    email        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    disabled_at  timestamptz,
    CHECK (role <> 'member' OR team IS NOT NULL)
);

-- API tokens are shown once and stored as a SHA-256 of the secret; `prefix`
-- (the token's first characters, not secret) finds the row.
CREATE TABLE api_tokens (
    id           bigserial PRIMARY KEY,
    user_name    text NOT NULL REFERENCES users (name),
    prefix       text NOT NULL UNIQUE,
    secret_hash  text NOT NULL,
    label        text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz
);

-- Silences and maintenance windows. `matchers` is a JSON list of
-- {"name": …, "op": "=" | "!=" | "=~" | "!~", "value": …}; names are
-- rule, domain, device_id, district, level or a label (alerts/silence.py).
CREATE TABLE silences (
    id         bigserial PRIMARY KEY,
    matchers   jsonb NOT NULL CHECK (jsonb_typeof(matchers) = 'array'),
    starts_at  timestamptz NOT NULL,
    ends_at    timestamptz NOT NULL,
    author     text NOT NULL,
    reason     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expired_at timestamptz,
    expired_by text,
    CHECK (ends_at > starts_at)
);
CREATE INDEX silences_ends ON silences (ends_at);

-- Time to acknowledge and to close, one row per alert (Grafana aggregates it
-- over the dashboard's range and variables).
CREATE VIEW alert_handling_times AS
SELECT a.id AS alert_id,
       a.rule,
       a.domain,
       a.district,
       a.team,
       a.level,
       a.max_level,
       a.condition,
       a.handling,
       a.started_at,
       a.acknowledged_at,
       a.dispatched_at,
       a.handled_at,
       a.closed_at,
       extract(epoch FROM a.acknowledged_at - a.started_at)::double precision AS ack_seconds,
       extract(epoch FROM a.closed_at - a.started_at)::double precision AS close_seconds
FROM alerts a;
