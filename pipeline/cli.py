"""The `finsent` command. Thin: each subcommand parses arguments and calls one module.

Training code (and torch) is imported only inside the subcommands that need it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .config import ConfigError, Settings, load_settings

app = typer.Typer(help="finsent: real-time financial sentiment monitor.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
stack_app = typer.Typer(help="Run the real services (Kafka, Elasticsearch, Prometheus, Alertmanager) on 127.0.0.1.",
                        no_args_is_help=True)
app.add_typer(stack_app, name="stack")
console = Console()
err = Console(stderr=True)

ConfigOption = typer.Option(None, "--config", "-c", help="YAML configuration file (FINSENT_* variables override it).")
ServicesArg = typer.Argument(None, help="Services to act on (default: all): kafka elasticsearch alertmanager prometheus.")


def settings_or_exit(config: Optional[Path]) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _fail(exc: Exception) -> None:
    err.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(1)


def _status_table(rows) -> Table:
    table = Table("service", "address", "version", "health")
    for row in rows:
        health = "[green]healthy[/green]" if row.healthy else ("[yellow]starting[/yellow]" if row.running else "[dim]stopped[/dim]")
        table.add_row(row.name, row.address, row.version, health)
    return table


@stack_app.command("up")
def stack_up(services: Optional[list[str]] = ServicesArg, config: Optional[Path] = ConfigOption) -> None:
    """Download (cached), start and wait for each service; does nothing for those already up."""
    from . import stack

    settings = settings_or_exit(config)
    try:
        rows = stack.up(settings.stack_home, services)
    except stack.StackError as exc:
        _fail(exc)
    console.print(_status_table(rows))
    console.print(f"state and logs: {settings.stack_home}")


@stack_app.command("status")
def stack_status(services: Optional[list[str]] = ServicesArg, config: Optional[Path] = ConfigOption) -> None:
    """Each service's address, version and health; exit status 1 when one is not healthy."""
    from . import stack

    settings = settings_or_exit(config)
    rows = stack.status(settings.stack_home, services)
    console.print(_status_table(rows))
    if not all(r.healthy for r in rows):
        raise typer.Exit(1)


@stack_app.command("down")
def stack_down(services: Optional[list[str]] = ServicesArg, config: Optional[Path] = ConfigOption) -> None:
    """Stop the services (their data stays under the stack home)."""
    from . import stack

    settings = settings_or_exit(config)
    stopped = stack.down(settings.stack_home, services)
    console.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
