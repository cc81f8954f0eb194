"""Alert lifecycle, routing, notifications and the field-team API (see the alerts issue)."""
