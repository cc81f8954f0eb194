"""Rule engine and city vital signs (see the rule engine issue): readings in, alert transitions out."""
