"""Run a file server so that nothing it writes can hurt the host: ``python -m vmkit.host.fsguard
[--readonly] --uid=N --gid=N --root=DIR --listen=SOCKET SOURCE -- SERVER ARGS...``.

A virtio-fs server writes what the guest asks for, with the guest's uids, set-id bits and
device numbers; Debian 12's virtiofsd can map none of them. This wrapper gives the server:

- a seccomp filter, kept across ``exec`` and by every thread: ``chmod``/``open``/``mknod`` with
  a setuid or setgid bit and ``mknod`` of a device fail with EPERM, every ``chown`` fails with
  EPERM, and ``setresuid``/``setresgid`` do nothing (virtiofsd switches to the guest caller's
  uid to create a file; it stays the host user instead, so every new file is the host user's);
- a user + mount namespace in which ``SOURCE`` is bind-mounted on ``--root`` ``nosuid,nodev``
  and, for ``--readonly``, read-only, so no guest request can change it (a ``mount -o
  remount,rw`` in the guest included); outside that namespace ``--root`` stays empty;
- a second user namespace in which the host user is the guest's login user (``--uid``,
  ``--gid``): the guest sees the host user's files as its login user's, and may write them.

It needs no privilege where the host allows unprivileged user namespaces.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import stat
import sys
from collections.abc import Sequence

from vmkit.host.runner import run

#: Set-id bits: never stored through a share.
_SETID = (stat.S_ISUID, stat.S_ISGID)
_S_IFMT = 0o170000
#: Where each call carries the new file's mode.
_MODE_ARG = {"chmod": 1, "fchmod": 1, "fchmodat": 2, "open": 2, "openat": 3, "creat": 1}
_MKNOD_MODE_ARG = {"mknod": 1, "mknodat": 2}
_CHOWN = ("chown", "fchown", "lchown", "fchownat")
_SETID_CALLS = ("setresuid", "setresgid", "setuid", "setgid", "setreuid", "setregid")

#: Mounts the share (bind, nosuid, nodev, maybe read-only) inside the new mount namespace,
#: then maps the host user to the guest's login user in a nested user namespace.
_SETUP = """
set -e
mount --bind -- "$1" "$2"
mount -o "remount,bind,nosuid,nodev$3" -- "$2"
uid=$4 gid=$5
shift 5
exec unshare --user --map-user="$uid" --map-group="$gid" --keep-caps -- "$@"
"""


def unavailable() -> str:
    """Why this host cannot run a confined server ("" if it can): the seccomp library, or
    user namespaces."""
    if sys.platform != "linux":
        return "it needs Linux's user namespaces and seccomp"
    try:
        import pyseccomp  # noqa: F401 -- loads libseccomp
    except (ImportError, OSError, RuntimeError) as e:
        return f"libseccomp cannot be loaded ({e})"
    r = run(["unshare", "--user", "--map-root-user", "--mount", "true"], check=False)
    if not r.ok:
        return f"this host does not allow user namespaces ({r.stderr.strip() or r.exit_code})"
    return ""


def install_filter() -> None:
    """Install the seccomp filter described in the module docstring on this process."""
    import pyseccomp as seccomp

    f = seccomp.SyscallFilter(seccomp.ALLOW)
    deny = seccomp.ERRNO(errno.EPERM)
    for call, arg in _MODE_ARG.items():
        for bit in _SETID:
            f.add_rule(deny, call, seccomp.Arg(arg, seccomp.MASKED_EQ, bit, bit))
    for call, arg in _MKNOD_MODE_ARG.items():
        for bit in _SETID:
            f.add_rule(deny, call, seccomp.Arg(arg, seccomp.MASKED_EQ, bit, bit))
        for kind in (stat.S_IFCHR, stat.S_IFBLK):
            f.add_rule(deny, call, seccomp.Arg(arg, seccomp.MASKED_EQ, _S_IFMT, kind))
    for call in _CHOWN:
        f.add_rule(deny, call)
    # openat2 carries its mode in a struct seccomp cannot read; glibc falls back on ENOSYS.
    f.add_rule(seccomp.ERRNO(errno.ENOSYS), "openat2")
    for call in _SETID_CALLS:
        f.add_rule(seccomp.ERRNO(0), call)
    f.load()


def command(
    source: str,
    *,
    root: str,
    listen: str,
    readonly: bool,
    uid: int,
    gid: int,
    server: Sequence[str],
) -> list[str]:
    """The argv that runs ``server`` confined as the module docstring says: ``source`` is
    bind-mounted on the empty folder ``root`` (the server serves ``root``), and ``server`` gets
    ``--fd=N`` for a unix socket listening at ``listen`` (made 0600 before it starts)."""
    return [
        sys.executable,
        "-m",
        "vmkit.host.fsguard",
        *(["--readonly"] if readonly else []),
        f"--uid={uid}",
        f"--gid={gid}",
        f"--root={root}",
        f"--listen={listen}",
        source,
        "--",
        *server,
    ]


def main(argv: Sequence[str] | None = None) -> None:
    """The wrapper process (see the module docstring); Linux only."""
    if sys.platform != "linux":
        raise SystemExit("vmkit.host.fsguard runs on Linux only (namespaces, seccomp)")
    import resource

    p = argparse.ArgumentParser(prog="python -m vmkit.host.fsguard")
    p.add_argument("--readonly", action="store_true")
    p.add_argument("--uid", type=int, required=True, help="the guest's login uid")
    p.add_argument("--gid", type=int, required=True, help="the guest's login gid")
    p.add_argument("--root", required=True, help="the empty folder the source appears on")
    p.add_argument("--listen", required=True, help="the server's unix socket")
    p.add_argument("source")
    p.add_argument("server", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    server = a.server[1:] if a.server[:1] == ["--"] else a.server
    # The socket is made here and handed over (virtiofsd --fd): with a path of its own,
    # Debian 12's virtiofsd would lock it with a pid file in /run/virtiofsd, which only root
    # may write.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(a.listen)
    finally:
        os.umask(old)
    sock.listen(1)
    sock.set_inheritable(True)
    server = [*server, f"--fd={sock.fileno()}"]
    # virtiofsd keeps a descriptor per file the guest has looked up; it cannot raise its own
    # hard limit inside a user namespace, so it gets the highest soft limit now.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    install_filter()
    flags = ",ro" if a.readonly else ""
    outer = ["unshare", "--user", "--map-root-user", "--mount", "--propagation=private"]
    setup = ["sh", "-c", _SETUP, "sh", a.source, a.root, flags, str(a.uid), str(a.gid), *server]
    os.execvp(outer[0], [*outer, "--", *setup])


if __name__ == "__main__":
    main()
