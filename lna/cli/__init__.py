"""Console entry points: `lna <subcommand>` and one `lna-<subcommand>` script each.

Every command is a click command in its own module of this package. User mistakes
(LnaError, bad options) and failed writes (full disk, no permission) print one line and
exit non-zero; anything else is a bug and keeps its traceback. Ctrl-C and SIGTERM stop a
run the same way: what was finished is kept, and the same command resumes it.
"""
import errno
import sys

import click

from lna.core import lock
from lna.core.errors import LnaError
from lna.core.interrupts import Terminated, terminate_as_interrupt

HELP = {"help_option_names": ["-h", "--help"]}
INTERRUPTED = "interrupted; run the same command again to resume"


def _commands() -> dict:
    # Imported here so `lna --help` stays light; torch loads only inside commands.
    from lna.cli.ablate import ablate
    from lna.cli.align import align
    from lna.cli.compare import compare
    from lna.cli.eval import eval_
    from lna.cli.experts import experts
    from lna.cli.identify import identify
    from lna.cli.import_counts import import_counts
    from lna.cli.launch import launch
    from lna.cli.merge import merge
    from lna.cli.profile import profile
    from lna.cli.report import report
    from lna.cli.steer import steer

    return {"profile": profile, "identify": identify, "ablate": ablate, "report": report,
            "compare": compare, "import-counts": import_counts, "merge": merge, "eval": eval_, "align": align,
            "launch": launch, "steer": steer, "experts": experts}


class _Group(click.Group):
    def list_commands(self, ctx):
        return list(_commands())

    def get_command(self, ctx, name):
        return _commands().get(name)


@click.group(cls=_Group, context_settings=HELP)
@click.version_option(package_name="lna")
def cli():
    """lna: find, test and compare the language neurons of gated-MLP LLMs (Llama, Mistral, Qwen, Gemma, ...)."""


def run(command: click.Command, prog: str, argv=None) -> int:
    """Run a click command, turning user errors into one line and an exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        # make_context + invoke rather than command.main: main turns Ctrl-C into click's
        # Abort after printing a blank line, and would hide SIGTERM behind it.
        # lock.scope: the outputs a command locked are released when it ends (lna.core.lock)
        with terminate_as_interrupt(), lock.scope(), command.make_context(prog, args, **HELP) as ctx:
            command.invoke(ctx)
    except click.exceptions.Exit as done:  # --help, --version
        return done.exit_code
    except click.exceptions.NoArgsIsHelpError as err:  # `lna` alone: the help, not an error line
        click.echo(err.format_message())
        return err.exit_code
    except LnaError as err:
        click.echo(f"{prog}: error: {err}", err=True)
        return 1
    except click.exceptions.Abort:
        click.echo(f"{prog}: aborted", err=True)
        return 130
    except click.ClickException as err:
        where = err.ctx.command_path if getattr(err, "ctx", None) else prog
        ctx_hint = f" (see {where} --help)" if isinstance(err, click.UsageError) else ""
        click.echo(f"{prog}: error: {err.format_message()}{ctx_hint}", err=True)
        return err.exit_code
    except Terminated:
        click.echo(f"{prog}: {INTERRUPTED}", err=True)
        return 143  # 128 + SIGTERM, as a shell reports a process ended by it
    except KeyboardInterrupt:
        click.echo(f"{prog}: {INTERRUPTED}", err=True)
        return 130
    except OSError as err:  # a read or write the commands did not wrap: still one line
        if err.errno == errno.EPIPE:  # stdout piped into a reader that stopped (`| head`)
            return 1
        from lna.core.atomic import write_error

        msg = write_error(err.filename, err, doing=None) if err.filename else (err.strerror or str(err))
        click.echo(f"{prog}: error: {msg}", err=True)
        return 1
    return 0


def main(argv=None):
    sys.exit(run(cli, "lna", argv))


def _script(name: str):
    def entry(argv=None):
        sys.exit(run(_commands()[name], f"lna-{name}", argv))

    return entry


profile_main = _script("profile")
identify_main = _script("identify")
ablate_main = _script("ablate")
report_main = _script("report")
compare_main = _script("compare")
eval_main = _script("eval")
align_main = _script("align")
launch_main = _script("launch")
steer_main = _script("steer")
experts_main = _script("experts")
