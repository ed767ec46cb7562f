"""Placeholder until the owning issue lands."""
import click


@click.command("identify")
def identify():
    """Not built yet."""
    raise click.ClickException("not built yet")
