"""Placeholder until the owning issue lands."""
import click


@click.command("report")
def report():
    """Not built yet."""
    raise click.ClickException("not built yet")
