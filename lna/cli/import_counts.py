"""Placeholder until the owning issue lands."""
import click


@click.command("import-counts")
def import_counts():
    """Not built yet."""
    raise click.ClickException("not built yet")
