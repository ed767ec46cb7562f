"""Placeholder until the owning issue lands."""
import click


@click.command("compare")
def compare():
    """Not built yet."""
    raise click.ClickException("not built yet")
