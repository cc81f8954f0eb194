"""Grafana dashboards as code and their provisioning.

`style` (house style), `catalog` (one function per dashboard), `sql` (typed queries
for the PostgreSQL datasource), `macros` (Grafana's macro expansion, for tests and
benchmarks), `queries` (the SQL inside a built dashboard), `build` (deterministic
JSON files) and `push` (upload through Grafana's HTTP API). See README "Dashboards".
"""
