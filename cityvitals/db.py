"""Database schema: versioned SQL migrations, applied idempotently in one transaction.

Files in `cityvitals/migrations/` are named `NNNN_name.sql`, or come as a pair
`NNNN_name.plain.sql` / `NNNN_name.timescale.sql` when plain PostgreSQL and
TimescaleDB need different DDL. Each applied version is a row of
`schema_migrations` with the variant and a checksum of the file.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psycopg

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+?)(?:\.(plain|timescale))?\.sql$")
_LOCK_KEY = 0x43495459  # "CITY": serialises concurrent upgrades

Flavor = Literal["plain", "timescale"]


class MigrationError(RuntimeError):
    """The schema cannot be brought up to date."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]


def available_migrations(flavor: Flavor, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    by_version: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _FILE.match(path.name)
        if m is None:
            raise MigrationError(
                f"{path}: migration files are named NNNN_name[.plain|.timescale].sql"
            )
        version, name, variant = int(m.group(1)), m.group(2), m.group(3)
        if variant is not None and variant != flavor:
            continue
        if version in by_version:
            raise MigrationError(
                f"{path}: version {version} is also {by_version[version].path.name}"
            )
        by_version[version] = Migration(version, name, path)
    return [by_version[v] for v in sorted(by_version)]


def detect_flavor(conn: psycopg.Connection[tuple[object, ...]]) -> Flavor:
    """`timescale` when the TimescaleDB extension is installed or can be created."""
    row = conn.execute(
        "SELECT installed_version IS NOT NULL FROM pg_available_extensions "
        "WHERE name = 'timescaledb'"
    ).fetchone()
    if row is None:
        return "plain"
    if row[0]:
        return "timescale"
    try:
        with conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.Error:
        # Packaged but not preloaded (shared_preload_libraries): use the plain schema.
        return "plain"
    return "timescale"


@dataclass(frozen=True)
class UpgradeResult:
    flavor: Flavor
    applied: list[Migration]
    current: int


def upgrade(url: str, directory: Path = MIGRATIONS_DIR) -> UpgradeResult:
    """Apply every pending migration in one transaction; safe to call at every start."""
    try:
        conn = psycopg.connect(url, autocommit=True)
    except psycopg.OperationalError as exc:
        raise MigrationError(f"cannot connect to the database to migrate it: {exc}") from None
    with conn:
        flavor = _recorded_flavor(conn) or detect_flavor(conn)
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version    integer PRIMARY KEY,
                       name       text NOT NULL,
                       variant    text NOT NULL,
                       checksum   text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {
                int(v): str(c)
                for v, c in conn.execute("SELECT version, checksum FROM schema_migrations")
            }
            applied = []
            for migration in available_migrations(flavor, directory):
                if migration.version in done:
                    continue
                try:
                    conn.execute(migration.path.read_text())
                except psycopg.Error as exc:
                    raise MigrationError(
                        f"{migration.path.name} failed, nothing was changed: {exc}"
                    ) from None
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, variant, checksum) "
                    "VALUES (%s, %s, %s, %s)",
                    (migration.version, migration.name, flavor, migration.checksum),
                )
                applied.append(migration)
            current = max([*done, *(m.version for m in applied)], default=0)
    return UpgradeResult(flavor, applied, current)


def _recorded_flavor(conn: psycopg.Connection[tuple[object, ...]]) -> Flavor | None:
    """The flavor the schema was created with: switching later needs a data migration."""
    row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return None
    found = conn.execute(
        "SELECT variant FROM schema_migrations ORDER BY version DESC LIMIT 1"
    ).fetchone()
    if found is None or found[0] not in ("plain", "timescale"):
        return None
    return "timescale" if found[0] == "timescale" else "plain"


def schema_status(url: str) -> tuple[Flavor | None, list[tuple[int, str, str]]]:
    """The recorded flavor and (version, name, applied_at) of every applied migration."""
    with psycopg.connect(url, autocommit=True) as conn:
        flavor = _recorded_flavor(conn)
        if flavor is None:
            return None, []
        rows = conn.execute(
            "SELECT version, name, applied_at::text FROM schema_migrations ORDER BY version"
        ).fetchall()
    return flavor, [(int(v), str(n), str(a)) for v, n, a in rows]
