-- Grafana's read-only role may read what the alert-handling and notification
-- migrations (0005, 0006) added: handling-time views, routing decisions and the
-- outbox's delivery status. Message bodies (payload, subject, target addresses)
-- and attempts' error texts stay out of reach, as dead-letter payloads do.
GRANT SELECT ON alert_handling_by_team, alert_handling_by_district, alert_handling_by_domain,
                alert_routing
    TO cityvitals_grafana;
GRANT SELECT (id, kind, team, channel, channel_type, language, alert_ids, group_key, level,
              status, attempts, created_at, sent_at)
    ON notifications TO cityvitals_grafana;
GRANT SELECT (id, notification_id, attempt, started_at, finished_at, outcome)
    ON notification_attempts TO cityvitals_grafana;
