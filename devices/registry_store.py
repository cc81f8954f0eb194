"""PostgreSQL adapter of the device registry (`devices` table)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg.types.json import Jsonb

from devices.registry import DeviceRecord


@dataclass(frozen=True, slots=True)
class UpsertResult:
    inserted: int
    updated: int


def upsert_devices(
    conn: psycopg.Connection[tuple[object, ...]], records: Sequence[DeviceRecord]
) -> UpsertResult:
    """Insert or update devices in one transaction; a provisional device becomes registered."""
    inserted = updated = 0
    with conn.transaction(), conn.cursor() as cur:
        for r in records:
            cur.execute(
                """INSERT INTO devices AS d (device_id, profile, district, name, lat, lon,
                                             attributes, provisional)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
                   ON CONFLICT (device_id) DO UPDATE SET
                       profile = EXCLUDED.profile, district = EXCLUDED.district,
                       name = EXCLUDED.name, lat = EXCLUDED.lat, lon = EXCLUDED.lon,
                       attributes = EXCLUDED.attributes, provisional = EXCLUDED.provisional,
                       updated_at = now()
                   RETURNING (xmax = 0)""",
                (
                    r.device_id,
                    r.profile,
                    r.district,
                    r.name,
                    r.lat,
                    r.lon,
                    Jsonb(r.attributes),
                    r.provisional,
                ),
            )
            row = cur.fetchone()
            if row and row[0]:
                inserted += 1
            else:
                updated += 1
    return UpsertResult(inserted, updated)


def list_devices(
    conn: psycopg.Connection[tuple[object, ...]],
    profile: str | None = None,
    district: str | None = None,
    provisional: bool | None = None,
    limit: int | None = None,
) -> list[DeviceRecord]:
    rows = conn.execute(
        """SELECT device_id, profile, district, name, lat, lon, attributes, provisional
           FROM devices
           WHERE (%(profile)s::text IS NULL OR profile = %(profile)s)
             AND (%(district)s::text IS NULL OR district = %(district)s)
             AND (%(provisional)s::bool IS NULL OR provisional = %(provisional)s)
           ORDER BY district, profile, device_id
           LIMIT %(limit)s""",
        {"profile": profile, "district": district, "provisional": provisional, "limit": limit},
    ).fetchall()
    return [
        DeviceRecord(
            device_id=str(d),
            profile=str(p),
            district=str(s),
            name=str(n),
            lat=None if lat is None else float(str(lat)),
            lon=None if lon is None else float(str(lon)),
            attributes=dict(a) if isinstance(a, dict) else {},
            provisional=bool(prov),
        )
        for d, p, s, n, lat, lon, a, prov in rows
    ]
