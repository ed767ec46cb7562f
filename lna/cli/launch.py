"""`lna launch --shards N [--ray ADDRESS] [--gpus-per-shard G] <lna-profile options>`: the
shards of one profile as Ray tasks, merged into --out."""
import click

from lna.cli.options import POSITIVE
from lna.cli.profile import profile as _profile


@click.command("launch")
@click.option("--shards", "-N", "n_shards", type=POSITIVE, required=True,
              help="Number of shards (Ray tasks); more shards than GPUs queue, and balance better.")
@click.option("--ray", "address", default=None, metavar="ADDRESS",
              help="The Ray cluster: host:port of its head (ray start --head prints it), auto (the cluster this "
                   "machine belongs to) or ray://host:10001 (needs ray[client]); default: Ray started on this "
                   "machine, over its own GPUs or CPUs.")
@click.option("--gpus-per-shard", type=click.FloatRange(min=0), default=None,
              help="GPUs each shard asks Ray for (0.5: two shards a GPU; 0: CPU) [default: 1 where the cluster "
                   "has GPUs, else 0].")
@click.option("--cpus-per-shard", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="CPUs each shard asks Ray for.")
@click.option("--shard-dir", default=None, type=click.Path(file_okay=False),
              help="Folder for the shard stores and their responses, on storage every node sees "
                   "[default: beside --out, OUT.shards/].")
@click.option("--out", "-o", default=None,
              help="Merged count store to write (default: <model>.<dataset>.zarr; refused if it exists). Reruns "
                   "resume the shard stores until it is written.")
@click.option("--retries", type=click.IntRange(min=0), default=3, show_default=True,
              help="Times Ray re-runs a shard whose worker died or that failed unexpectedly (it resumes its "
                   "store); user errors are not retried.")
def launch(quiet, n_shards, address, gpus_per_shard, cpus_per_shard, shard_dir, retries, **kwargs):
    """Profile on a Ray cluster: N shards of lna-profile (--shard K/N) as Ray tasks over the
    cluster's GPUs (or CPUs), retried where they fail, merged into --out: exactly the store
    of one lna-profile run. Takes lna-profile's options; rerun to resume.
    Needs `pip install 'lna[ray]'`, with lna, the model and the data on every node."""
    from lna.profiling.launch import run
    from lna.profiling.profile import Options

    run(Options(progress=not quiet, **kwargs), n_shards, address=address, gpus_per_shard=gpus_per_shard,
        cpus_per_shard=cpus_per_shard, folder=shard_dir, retries=retries)


# lna-profile's options (one definition): every shard runs with them. Not --responses (each
# shard keeps its own beside its store; give earlier responses as --dataset), --shard, or
# --out (above: the merged store).
launch.params.extend(p for p in _profile.params if p.name not in ("responses", "shard", "out"))
