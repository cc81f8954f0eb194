"""Grafana dashboards as code and their provisioning (see the dashboards issue)."""
