"""`cityvitals dashboards`: build the Grafana dashboards from code, check, push."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from dashboards.build import DEFAULT_OUT, build_all, check, write
from dashboards.push import PushError, push

dashboards_app = typer.Typer(
    help="Grafana dashboards as code: build the provisioning files, check them, push them.",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True)

_OUT = typer.Option(
    "--out",
    help="Folder of the dashboard JSON files (Grafana's dashboard provider reads it).",
)


@dashboards_app.command("build")
def dashboards_build(out: Annotated[Path, _OUT] = DEFAULT_OUT) -> None:
    """Write every dashboard as deterministic JSON (sorted keys, stable ids and uids)."""
    built = build_all()
    for path, b in zip(write(out, built), built, strict=True):
        console.print(f"{escape(str(path))}  [dim]{b.uid}[/dim]  {escape(b.title)}")


@dashboards_app.command("check")
def dashboards_check(out: Annotated[Path, _OUT] = DEFAULT_OUT) -> None:
    """Exit 1 when the files in --out are not what the code builds."""
    problems = check(out)
    for problem in problems:
        err.print(f"[red]{escape(problem)}[/red]")
    if problems:
        raise typer.Exit(1)
    console.print(f"{escape(str(out))}: up to date")


@dashboards_app.command("push")
def dashboards_push(
    url: Annotated[
        str,
        typer.Option(envvar="GRAFANA_URL", help="Grafana's base URL, e.g. http://grafana:3000."),
    ],
    token: Annotated[
        str | None,
        typer.Option(
            envvar="GRAFANA_TOKEN",
            help="A service-account token (Editor role or better); prefer the environment"
            " variable GRAFANA_TOKEN to the command line.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Upload every dashboard to a running Grafana through its HTTP API, into the folder
    CityVitals (created when missing), replacing earlier versions."""
    token = token or os.environ.get("GRAFANA_TOKEN")
    if not token:
        err.print("[red]error:[/red] give a service-account token: --token or GRAFANA_TOKEN")
        raise typer.Exit(2)
    try:
        result = push(url, token)
    except PushError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    if result.folder_created:
        console.print("created the folder CityVitals")
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    for path in result.dashboards:
        console.print(f"pushed {escape(path)}")
