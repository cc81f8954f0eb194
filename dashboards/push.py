"""`cityvitals dashboards push`: upload the dashboards to a running Grafana.

For a Grafana that is not provisioned from deploy/grafana/ (one the platform does
not run): through its HTTP API with a service-account token (grafana-client),
into the folder "CityVitals", overwriting earlier versions of the same uids.
A Grafana provisioned from the files refuses API writes to those dashboards;
there, rebuild the files instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from grafana_client.api import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException

from dashboards.build import Built, build_all
from dashboards.style import DATASOURCE_UID, FOLDER_TITLE, FOLDER_UID


class PushError(RuntimeError):
    """Grafana refused or could not be reached; the message says which and why."""


@dataclass
class PushResult:
    folder_created: bool = False
    dashboards: list[str] = field(default_factory=list)
    """URLs (paths) Grafana gave the uploaded dashboards."""
    warnings: list[str] = field(default_factory=list)


def _status(exc: GrafanaException) -> int | None:
    code = getattr(exc, "status_code", None)
    return int(code) if isinstance(code, int) else None


def push(
    url: str,
    token: str,
    built: Sequence[Built] | None = None,
    *,
    folder_uid: str = FOLDER_UID,
    folder_title: str = FOLDER_TITLE,
    timeout: float = 10.0,
) -> PushResult:
    """Create the folder when missing and upload every dashboard (overwrite)."""
    dashboards = list(built) if built is not None else build_all()
    api = GrafanaApi.from_url(url, credential=token, timeout=timeout)
    result = PushResult()
    try:
        try:
            api.folder.get_folder(folder_uid)
        except GrafanaClientError as exc:
            if _status(exc) != 404:
                raise
            api.folder.create_folder(folder_title, uid=folder_uid)
            result.folder_created = True
        try:
            api.datasource.get_datasource_by_uid(DATASOURCE_UID)
        except GrafanaClientError as exc:
            if _status(exc) != 404:
                raise
            result.warnings.append(
                f"Grafana has no datasource with uid {DATASOURCE_UID!r}: add the CityVitals"
                " PostgreSQL datasource with that uid (deploy/grafana/provisioning/datasources/)"
                " or the panels will show errors"
            )
        for b in dashboards:
            document: dict[str, Any] = {k: v for k, v in b.document.items() if k != "id"}
            answer = api.dashboard.update_dashboard(
                {
                    "dashboard": document,
                    "folderUid": folder_uid,
                    "overwrite": True,
                    "message": "cityvitals dashboards push",
                }
            )
            result.dashboards.append(str(answer.get("url", b.uid)))
    except GrafanaException as exc:
        raise PushError(f"Grafana at {url}: {exc}") from None
    except OSError as exc:
        raise PushError(f"cannot reach Grafana at {url}: {exc}") from None
    return result
