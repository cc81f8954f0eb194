-- Notifications (alerts/outbox.py, alerts/notifier.py): the outbox every message
-- goes through, each delivery attempt, what routing decided for each alert, and
-- the notifier's own state so a restart loses nothing and sends nothing twice.

-- One row per message to one channel of one team. The idempotency key is unique and
-- travels with the message (webhook header, e-mail Message-ID, MQTT payload field), so
-- a receiver can drop the one duplicate a crash between delivery and commit can cause.
-- status: pending → sending (claimed, lease until lease_until) → sent | pending (retry
-- at next_attempt_at) | failed (permanent error, or attempts exhausted).
-- attempt_started_at is set when a claimed row's delivery actually begins, so a sender
-- that dies is known to have interrupted an attempt, or only to have claimed the row.
CREATE TABLE notifications (
    id              bigserial PRIMARY KEY,
    idempotency_key text NOT NULL UNIQUE,
    kind            text NOT NULL CHECK (kind IN ('group', 'escalation', 'dispatch')),
    team            text NOT NULL,
    channel         text NOT NULL,
    channel_type    text NOT NULL CHECK (channel_type IN ('webhook', 'email', 'mqtt', 'apprise')),
    target          text NOT NULL DEFAULT '',
    language        text NOT NULL DEFAULT 'zh',
    alert_ids       bigint[] NOT NULL DEFAULT '{}',
    group_key       text,
    level           smallint,
    subject         text NOT NULL DEFAULT '',
    payload         jsonb NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sending', 'sent', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    max_attempts    integer NOT NULL CHECK (max_attempts >= 1),
    created_at      timestamptz NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    lease_until     timestamptz,
    attempt_started_at timestamptz,
    sent_at         timestamptz,
    last_error      text
);
CREATE INDEX notifications_due ON notifications (next_attempt_at)
    WHERE status IN ('pending', 'sending');
CREATE INDEX notifications_created ON notifications (created_at);
CREATE INDEX notifications_alerts ON notifications USING gin (alert_ids);

-- outcome: sent, retryable, permanent, or interrupted (the sender died mid-attempt;
-- recorded when another sender takes the row over after its lease ran out).
CREATE TABLE notification_attempts (
    id              bigserial PRIMARY KEY,
    notification_id bigint NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    attempt         integer NOT NULL,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz NOT NULL,
    outcome         text NOT NULL
                    CHECK (outcome IN ('sent', 'retryable', 'permanent', 'interrupted')),
    error           text,
    sender          text NOT NULL DEFAULT ''
);
CREATE INDEX notification_attempts_notification ON notification_attempts (notification_id);

-- What the routing tree decided for an alert when it first fired: the teams of the
-- matched routes, the owning team (copied to alerts.team when that is empty), and the
-- silences that held it quiet (recorded, shown, not notified). No foreign key: its
-- KEY SHARE lock on alerts would make the notifier wait on, and deadlock with, the
-- rule runtime's updates of the same alerts.
CREATE TABLE alert_routing (
    alert_id    bigint PRIMARY KEY,
    routes      text[] NOT NULL DEFAULT '{}',
    teams       text[] NOT NULL DEFAULT '{}',
    owner       text,
    silenced_by bigint[] NOT NULL DEFAULT '{}',
    routed_at   timestamptz NOT NULL
);
CREATE INDEX alert_routing_silenced ON alert_routing (alert_id)
    WHERE silenced_by <> '{}';

-- The notifier's progress: the last alert_events id it turned into notifications
-- (advanced in the same transaction as the outbox rows), its open groups and the
-- alerts it watches for escalation.
CREATE TABLE notifier_state (
    name        text PRIMARY KEY,
    last_event  bigint NOT NULL DEFAULT 0,
    groups      jsonb NOT NULL DEFAULT '[]'::jsonb,
    escalations jsonb NOT NULL DEFAULT '[]'::jsonb,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- A deployment upgraded to this version starts after the alert history it already
-- has: old alerts are not notified. A new database starts at 0.
INSERT INTO notifier_state (name, last_event)
SELECT 'default', COALESCE(max(id), 0) FROM alert_events;
