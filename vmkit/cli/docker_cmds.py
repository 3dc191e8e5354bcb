"""Docker in the VM: docker, env, context, image load/save, run."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence

import click
from rich.progress import DownloadColumn, Progress, TextColumn, TransferSpeedColumn

import vmkit.vm as api
from vmkit.cli.render import console, err_console, progress_printer, transfer_columns
from vmkit.docker import client as dockerhost
from vmkit.docker import env as shellenv
from vmkit.docker import images
from vmkit.errors import InvalidInput, ToolMissing
from vmkit.host import runner

_VM = click.option(
    "--vm", "vm_name", metavar="NAME", help="The VM (default: the only running one)."
)

# Set by the user's shell for another engine; they would override or confuse DOCKER_HOST.
_DOCKER_VARS = ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_TLS")


def register(group: click.Group) -> None:
    """Add this module's commands to ``group``."""
    for cmd in (docker_cmd, env, context, image, run):
        group.add_command(cmd)


def _exec_docker(vm: api.VM, args: Sequence[str]) -> None:
    """Replace this process with ``docker ARGS`` talking to the VM (stdin, tty, signals, exit code pass through)."""
    cli = shutil.which("docker")
    if cli is not None:
        dockerhost.ensure_socket(vm)
        environ = {k: v for k, v in os.environ.items() if k not in _DOCKER_VARS}
        environ["DOCKER_HOST"] = dockerhost.docker_host_url(vm)
        argv = [cli, *args]
    else:
        # No docker CLI on the host: run the guest's, through OpenSSH for a real terminal.
        argv = vm.ssh_command(["docker", *args])
        argv[0] = runner.which("ssh")
        if sys.stdin.isatty():
            argv.insert(1, "-t")
        environ = dict(os.environ)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, environ)


@click.command(
    "docker",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@_VM
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def docker_cmd(vm_name: str | None, args: tuple[str, ...]) -> None:
    """Run the docker CLI against the VM: vmkit docker [--vm NAME] -- ps -a

    Uses the host's docker CLI if there is one, else the guest's over SSH.
    """
    vm = api.resolve(vm_name)
    vm.require_running()
    _exec_docker(vm, list(args))


@click.command()
@click.argument("name", required=False)
@click.option(
    "--shell",
    type=click.Choice(shellenv.SHELLS),
    help="Syntax to print (default: your shell).",
)
@click.option("--unset", is_flag=True, help="Print the commands that undo it.")
def env(name: str | None, shell: str | None, unset: bool) -> None:
    """Print shell commands that point the docker CLI at VM NAME: eval "$(vmkit env NAME)"."""
    shell = shell or shellenv.detect_shell()
    command = "python -m vmkit env" + (f" {name}" if name else "") + f" --shell {shell}"
    if unset:
        click.echo(
            shellenv.render({"DOCKER_HOST": ""}, shell, unset=True, command=command + " --unset"),
            nl=False,
        )
        return
    vm = api.resolve(name)
    vm.require_running()
    dockerhost.ensure_socket(vm)
    try:
        text = shellenv.render(
            {"DOCKER_HOST": dockerhost.docker_host_url(vm)}, shell, command=command
        )
    except ValueError as e:
        raise InvalidInput(
            str(e), hint="use another --shell, or a VMKIT_HOME path without quotes"
        ) from e
    click.echo(text, nl=False)


def _csv_field(value: str) -> str:
    # The docker CLI parses `--docker` as one CSV record.
    if any(c in value for c in ',"\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


@click.command()
@click.argument("name", required=False)
def context(name: str | None) -> None:
    """Create or update docker context vmkit-NAME pointing at VM NAME."""
    try:
        cli = runner.which("docker")
    except ToolMissing:
        raise ToolMissing(
            "docker",
            hint="install the docker CLI (Debian: docker-cli / docker.io), "
            "or use `vmkit docker -- ARGS`, which works without it",
        ) from None
    vm = api.resolve(name)
    vm.require_running()
    dockerhost.ensure_socket(vm)
    ctx = f"vmkit-{vm.name}"
    exists = runner.run([cli, "context", "inspect", ctx], check=False, timeout=30).ok
    endpoint = _csv_field(f"host={dockerhost.docker_host_url(vm)}")
    runner.run(
        [
            cli,
            "context",
            "update" if exists else "create",
            ctx,
            "--description",
            f"vmkit VM {vm.name}",
            "--docker",
            endpoint,
        ],
        timeout=30,
    )
    console.print(f"[green]✓[/] docker context [bold]{ctx}[/] {'updated' if exists else 'created'}")
    console.print(f"  use it once:   docker --context {ctx} ps")
    console.print(f"  make default:  docker context use {ctx}")


@click.group()
def image() -> None:
    """Load image archives into the VM's Docker and save them out."""


@image.command("load")
@click.argument("file", type=click.Path(dir_okay=False, path_type=str))
@_VM
def image_load(file: str, vm_name: str | None) -> None:
    """Load FILE (.tar, .tar.gz, .tar.xz, .tar.zst, from `docker save`) into the VM."""
    vm = api.resolve(vm_name)
    vm.require_running()
    with Progress(*transfer_columns(), console=err_console, transient=False) as bar:
        task = bar.add_task(f"loading {os.path.basename(file)}", total=None)

        def show(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        result = images.load(vm, file, progress=show)
    if not result.images:
        console.print("[yellow]![/] dockerd reported no image names", soft_wrap=True)
    for name in result.images:
        console.print(f"[green]✓[/] loaded {name}", soft_wrap=True)
    console.print(
        f"  {result.file_bytes / (1 << 20):.0f} MiB in {result.seconds:.1f} s "
        f"({result.mib_per_s:.1f} MiB/s)"
    )


@image.command("save")
@click.argument("image_name", metavar="IMAGE")
@click.option(
    "-o", "--output", required=True, metavar="FILE", help="FILE.tar, .tar.gz, .tar.xz or .tar.zst"
)
@_VM
def image_save(image_name: str, output: str, vm_name: str | None) -> None:
    """Save IMAGE from the VM to a file on the host."""
    vm = api.resolve(vm_name)
    vm.require_running()
    columns = (
        TextColumn("[bold]{task.description}"),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
    )
    with Progress(*columns, console=err_console) as bar:
        task = bar.add_task(f"saving {image_name}", total=None)
        size = images.save(
            vm, image_name, output, progress=lambda done: bar.update(task, completed=done)
        )
    console.print(
        f"[green]✓[/] {image_name} → {output} ({size / (1 << 20):.0f} MiB of tar)", soft_wrap=True
    )


@click.command("run")
@click.argument("image_name", metavar="IMAGE")
@_VM
@click.option(
    "--share",
    "shares",
    multiple=True,
    metavar="DIR",
    help="Host folder to mount at the same path (repeatable).",
)
@click.option(
    "--forward",
    "forwards",
    multiple=True,
    metavar="PORT[:GUEST]",
    help="127.0.0.1:PORT on the host reaches container port GUEST (default PORT); repeatable.",
)
@click.option("-d", "--detach", is_flag=True, help="Start it in the background.")
@click.option("--name", help="Container name.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run(
    image_name: str,
    vm_name: str | None,
    shares: tuple[str, ...],
    forwards: tuple[str, ...],
    detach: bool,
    name: str | None,
    command: tuple[str, ...],
) -> None:
    """Run IMAGE in the VM with folders shared and ports forwarded: vmkit run IMAGE --share DIR --forward 8888 [-- CMD ...]"""
    ports = [dockerhost.parse_forward(f) for f in forwards]
    vm = api.resolve(vm_name)
    setup = dockerhost.prepare_run(
        vm, image_name, shares=shares, forwards=ports, progress=progress_printer()
    )
    args = ["run", *setup.docker_args()]
    if name:
        args += ["--name", name]
    if detach:
        args.append("-d")
    else:
        args.append("--rm")
        if sys.stdin.isatty():
            args += ["-i", "-t"]
    args += [image_name, *command]
    for url in setup.urls():
        console.print(f"[green]✓[/] open {url}", soft_wrap=True)
    _exec_docker(vm, args)
