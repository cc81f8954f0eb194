"""Rule engine and city vital signs (see the rule engine issue).

Readings in, alert transitions out.
"""
