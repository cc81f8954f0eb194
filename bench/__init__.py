"""Benchmarks: `python bench/ingest.py` measures the MQTT-to-PostgreSQL ingest."""
