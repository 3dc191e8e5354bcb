"""A recording stand-in for ``vmkit.guest.ssh.SSHSession`` whose guest answers can be scripted.

It has ``SSHSession.run``'s signature and result type, records every call, and plays a tiny
guest: a mount table (``mount -t``, ``umount``, ``cat /proc/self/mounts``), loadable kernel
modules (``modprobe``), groups (``getent group``) and ``mkdir``. Anything else succeeds with
no output unless a scripted answer (``on``) matches first.

    guest = FakeSSHSession(modules={"vboxsf"}, groups={"docker": 999})
    guest.on(["docker", "info"], stdout="...")
    guest.on(["mount", "-t", "vboxsf"], exit_code=32, stderr="mount: ...: wrong fs type")
    provider_code(ssh=lambda: guest)
    assert guest.commands()[-1][:2] == ["mount", "-t"]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import paramiko

from vmkit.errors import GuestCommandFailed, SSHError
from vmkit.guest.ssh import SSHSession
from vmkit.host.runner import Result
from vmkit.state import SSHEndpoint

#: Turns a call's argv (without ``sudo``) into (exit code, stdout, stderr).
Responder = Callable[[list[str]], tuple[int, str, str]]


@attrs.frozen
class Call:
    """One command the code under test ran in the fake guest."""

    argv: list[str]  # as given, without the sudo prefix
    sudo: bool
    input: bytes | str | None
    check: bool


@attrs.define
class _Script:
    prefix: list[str]
    respond: Responder
    once: bool


def _escape_mount(path: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as octal; non-ASCII as raw UTF-8.
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in path)


class FakeSSHSession(SSHSession):
    """A fake guest reached by a fake SSH connection. Never opens a socket."""

    def __init__(
        self,
        *,
        modules: Sequence[str] = ("vboxsf",),
        builtin_filesystems: Sequence[str] = ("ext4", "proc", "sysfs", "tmpfs"),
        groups: dict[str, int] | None = None,
        endpoint: SSHEndpoint | None = None,
    ) -> None:
        super().__init__(endpoint or SSHEndpoint("127.0.0.1", 22, "user", "", "ssh-ed25519 AAAA"))
        self.calls: list[Call] = []
        self.modules = set(modules)
        self.loaded: set[str] = set()
        self.builtin_filesystems = set(builtin_filesystems)
        self.groups = {"docker": 999} if groups is None else dict(groups)
        #: mount point -> (device, fstype, options)
        self.mounts: dict[str, tuple[str, str, str]] = {"/": ("/dev/vda", "ext4", "rw")}
        self.dirs: set[str] = set()
        self.closed = False
        self._scripts: list[_Script] = []

    # -- scripting --------------------------------------------------------------------------

    def on(
        self,
        prefix: Sequence[str],
        *,
        exit_code: int = 0,
        stdout: str = "",
        stderr: str = "",
        respond: Responder | None = None,
        once: bool = False,
    ) -> None:
        """Answer commands starting with ``prefix`` (latest script wins), before the built-in guest."""
        fixed = (exit_code, stdout, stderr)
        self._scripts.insert(0, _Script(list(prefix), respond or (lambda _argv: fixed), once))

    def commands(self) -> list[list[str]]:
        """The argv of every call so far, in order (without sudo)."""
        return [c.argv for c in self.calls]

    # -- SSHSession ---------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 120.0,
        input: bytes | str | None = None,
        sudo: bool = False,
        hint: str | None = None,
    ) -> Result:
        """Record the call and answer it like ``SSHSession.run`` would."""
        if isinstance(argv, (str, bytes)):
            raise TypeError("SSHSession.run takes an argument list, never a command string")
        if self.closed:
            raise SSHError("SSH connection closed")
        args = list(argv)
        self.calls.append(Call(args, sudo, input, check))
        code, out, err = self._answer(args)
        shown = ["sudo", "-n", "--", *args] if sudo else args
        result = Result(shown, code, out, err, 0.0)
        if check and code != 0:
            raise GuestCommandFailed(shown, code, out, err, hint=hint)
        return result

    def client(self) -> paramiko.SSHClient:
        """There is no connection to hand out; streaming callers need a real guest."""
        raise SSHError("FakeSSHSession has no real connection")

    def close(self) -> None:
        self.closed = True

    # -- the built-in guest --------------------------------------------------------------------

    def _answer(self, args: list[str]) -> tuple[int, str, str]:
        for script in self._scripts:
            if args[: len(script.prefix)] == script.prefix:
                if script.once:
                    self._scripts.remove(script)
                return script.respond(args)
        handler = {
            "cat": self._cat,
            "mount": self._mount,
            "umount": self._umount,
            "modprobe": self._modprobe,
            "getent": self._getent,
            "mkdir": self._mkdir,
        }.get(args[0])
        return handler(args[1:]) if handler else (0, "", "")

    def _cat(self, args: list[str]) -> tuple[int, str, str]:
        if args == ["/proc/self/mounts"] or args == ["/proc/mounts"]:
            lines = [
                f"{_escape_mount(dev)} {_escape_mount(mp)} {fs} {opts} 0 0\n"
                for mp, (dev, fs, opts) in self.mounts.items()
            ]
            return 0, "".join(lines), ""
        if args == ["/proc/filesystems"]:
            names = sorted(self.builtin_filesystems | self.loaded)
            return 0, "".join(f"nodev\t{n}\n" for n in names), ""
        return 1, "", f"cat: {args[-1] if args else ''}: No such file or directory\n"

    def _mount(self, args: list[str]) -> tuple[int, str, str]:
        fstype, opts, pos = "", "rw", []
        i = 0
        while i < len(args):
            if args[i] == "-t":
                fstype, i = args[i + 1], i + 2
            elif args[i] == "-o":
                opts, i = args[i + 1], i + 2
            elif args[i] == "--":
                i += 1
            else:
                pos.append(args[i])
                i += 1
        if len(pos) != 2:
            return 1, "", "mount: bad usage\n"
        dev, target = pos
        if fstype and fstype not in self.builtin_filesystems | self.loaded:
            return 32, "", f"mount: {target}: unknown filesystem type '{fstype}'.\n"
        if target not in self.dirs:
            return 32, "", f"mount: {target}: mount point does not exist.\n"
        self.mounts[target] = (dev, fstype, opts)
        return 0, "", ""

    def _umount(self, args: list[str]) -> tuple[int, str, str]:
        target = args[-1] if args else ""
        if target not in self.mounts:
            return 32, "", f"umount: {target}: not mounted.\n"
        del self.mounts[target]
        return 0, "", ""

    def _modprobe(self, args: list[str]) -> tuple[int, str, str]:
        name = args[-1] if args else ""
        if name not in self.modules:
            return (
                1,
                "",
                f"modprobe: FATAL: Module {name} not found in directory /lib/modules/6.1.0-fake\n",
            )
        self.loaded.add(name)
        return 0, "", ""

    def _getent(self, args: list[str]) -> tuple[int, str, str]:
        if len(args) == 2 and args[0] == "group" and args[1] in self.groups:
            return 0, f"{args[1]}:x:{self.groups[args[1]]}:user\n", ""
        return 2, "", ""

    def _mkdir(self, args: list[str]) -> tuple[int, str, str]:
        paths = (
            [a for a in args if not a.startswith("-")]
            if "--" not in args
            else args[args.index("--") + 1 :]
        )
        for p in paths:
            # mkdir -p makes the parents too.
            parts = p.rstrip("/").split("/")
            for n in range(2, len(parts) + 1):
                self.dirs.add("/".join(parts[:n]))
        return 0, "", ""
