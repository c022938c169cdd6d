"""Entry point of the ``attnlab`` command: a click group whose commands live one per module.

User mistakes (ValueError, TypeError, missing files) and failures of the file system (a full disk,
no permission) print one line on stderr and exit with status 2, never a traceback; Ctrl-C exits
with 130.
"""

from __future__ import annotations

import sys

import click

from attnlab import __version__


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (ValueError, TypeError, FileNotFoundError, IsADirectoryError) as exc:
            click.echo(f"attnlab: {_rank()}error: {exc}", err=True)
            sys.exit(2)
        except OSError as exc:  # a full disk, no permission, a read-only file system
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"attnlab: {_rank()}error: {where}{exc.strerror or exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo(f"attnlab: {_rank()}interrupted", err=True)
            sys.exit(130)
        except Exception as exc:
            from attnlab.distributed.world import collective_failure

            message = collective_failure(exc)
            if message is None:
                raise
            click.echo(f"attnlab: {_rank()}error: {message}", err=True)
            sys.exit(1)


def _rank() -> str:
    """``"rank N: "`` in a process that is one of several ranks (torchrun), else ``""``."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return f"rank {os.environ.get('RANK', '?')}: "
    return ""


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="attnlab")
def cli() -> None:
    """attnlab: attention mechanisms for large language models."""


def _register() -> None:
    from attnlab.cli import (
        backends,
        bench,
        chat,
        compare,
        convert,
        evaluate,
        heads,
        info,
        inspect_page,
        predict,
        prune,
        sample,
        train,
    )

    cli.add_command(backends.backends)
    cli.add_command(bench.bench)
    cli.add_command(info.info)
    cli.add_command(train.train)
    cli.add_command(sample.sample)
    cli.add_command(chat.chat)
    cli.add_command(evaluate.evaluate)
    cli.add_command(convert.convert)
    cli.add_command(predict.predict)
    cli.add_command(inspect_page.inspect_page)
    cli.add_command(heads.heads)
    cli.add_command(prune.prune)
    cli.add_command(compare.compare)


_register()


def main() -> None:
    cli(prog_name="attnlab")


if __name__ == "__main__":
    main()
