from __future__ import annotations

from tests.support import Publisher, scalar, wait_until


def test_readings_land_once(ingest, database, broker, topic_root):
    pub = Publisher(broker.url)
    for i in range(200):
        pub.send(
            f"{topic_root}/d1/rain_gauge/rg-1/telemetry",
            {"ts": 1764036000000 + i * 1000, "seq": i, "values": {"rain_mm": 0.5}},
        )
    pub.close()
    wait_until(lambda: scalar(database, "SELECT count(*) FROM readings") == 200, what="200 rows")
