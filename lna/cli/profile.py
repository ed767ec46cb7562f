"""Placeholder until the owning issue lands."""
import click


@click.command("profile")
def profile():
    """Not built yet."""
    raise click.ClickException("not built yet")
