"""Placeholder until the owning issue lands."""
import click


@click.command("ablate")
def ablate():
    """Not built yet."""
    raise click.ClickException("not built yet")
