"""The ``vmkit`` command: a click group whose commands live in one module per topic.

Errors: a ``VmkitError`` is printed as one line (``--debug`` adds the traceback) and exits 1;
click's usage errors exit 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import importlib
import sys
import traceback

import click

from vmkit.cli.render import err_console, show_notices
from vmkit.errors import VmkitError

# Each module defines ``register(group)``; adding a topic is one line here.
COMMAND_MODULES = [
    "vmkit.cli.vm_cmds",
    "vmkit.cli.share_cmds",
    "vmkit.cli.host_cmds",
    "vmkit.cli.docker_cmds",
    "vmkit.cli.lab_cmds",
    "vmkit.cli.bundle_cmds",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="vmkit")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """vmkit: small Linux VMs with live shared folders and port forwards, Docker inside."""
    ctx.obj = {"debug": debug}


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(cli)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script and ``python -m vmkit``."""
    show_notices()
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        # Without standalone mode click returns ctx.exit()'s code instead of exiting.
        code = cli.main(args=argv, prog_name="vmkit", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except VmkitError as e:
        if debug:
            traceback.print_exc()
        err_console.print(f"error: {e}", markup=False, soft_wrap=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
