"""The per-VM seed disk: the identity a VM gets at boot, with no secret shared between VMs.

A seed is a small raw ext4 filesystem (no partition table) labelled ``vmkit-seed``, made on
the host by ``mkfs.ext4 -d`` (no root, no loop mount). It holds:

- ``authorized_keys``: the VM's own client public key, for the ``vmkit`` user;
- ``ssh_host_ed25519_key`` and ``.pub``: the guest's host key, made on the host, so vmkit
  pins it before the first connection;
- ``hostname``;
- for a quick-started VM's reseed (``vmkit.providers.qemu.quickstart``) also ``machine-id``,
  ``clock`` (the host's time, seconds since the epoch) and ``nonce`` (which the guest's
  console line names when the identity is installed).

In the guest, vmkit-mini's initrd (boxes/vmkit-mini/initrd/seed) mounts it read-only before
systemd starts, every boot, and installs the files. A raw image is
also what ``qemu-img convert -O vdi`` turns into a VirtualBox disk.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from vmkit.errors import InvalidInput, NotFound
from vmkit.host.runner import run, which

LABEL = "vmkit-seed"
SIZE = "4M"

# The seed's files and their modes; owners are set to root in the image.
FILES = {
    "authorized_keys": 0o644,
    "ssh_host_ed25519_key": 0o600,
    "ssh_host_ed25519_key.pub": 0o644,
    "hostname": 0o644,
}
#: Files a reseed adds (``make_seed(extra=...)``).
RESEED_FILES = ("machine-id", "clock", "nonce")

_PUBLIC_KEY = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+|sk-\S+@openssh\.com) [A-Za-z0-9+/]+={0,3}( \S.*)?$"
)
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)


def hostname_for(vm_name: str) -> str:
    """The hostname a VM named ``vm_name`` gets from its seed."""
    return f"vmkit-{vm_name}"


def make_seed(
    path: Path,
    *,
    authorized_key: str,
    host_key: Path,
    hostname: str,
    extra: Mapping[str, str] | None = None,
) -> Path:
    """Write the seed image for one VM at ``path`` (0600: it holds a private key); return it.

    ``authorized_key`` is one or more OpenSSH public key lines; ``host_key`` is the guest's
    private host key (ed25519, as ``vmkit.guest.keys.generate`` makes it) with ``host_key.pub``
    beside it; ``extra`` holds a reseed's files (``RESEED_FILES``). The image replaces ``path``
    atomically.
    """
    extra = dict(extra or {})
    unknown = sorted(set(extra) - set(RESEED_FILES))
    if unknown:
        raise InvalidInput(f"a seed has no file {unknown[0]!r}")
    keys = _check_authorized_keys(authorized_key)
    _check_hostname(hostname)
    private, public = _read_host_key(host_key)

    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".seed-", dir=path.parent))
    image = staging / "seed.img"
    try:
        content = staging / "content"
        content.mkdir()
        texts = {
            "authorized_keys": keys,
            "ssh_host_ed25519_key": private,
            "ssh_host_ed25519_key.pub": public,
            "hostname": hostname + "\n",
            **{name: text + "\n" for name, text in extra.items()},
        }
        modes = {**FILES, **dict.fromkeys(extra, 0o644)}
        for name, mode in modes.items():
            target = content / name
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(texts[name])
            os.chmod(target, mode)
        run(
            [
                _sbin("mkfs.ext4"),
                "-q",
                "-F",
                "-t",
                "ext4",
                "-L",
                LABEL,
                # Read-only at boot: a journal would only take space.
                "-O",
                "^has_journal",
                "-E",
                "root_owner=0:0",
                "-d",
                str(content),
                str(image),
                SIZE,
            ],
            timeout=60,
        )
        # mkfs.ext4 -d copies the caller's uid; in the guest these are root's files.
        commands = "".join(
            f"set_inode_field /{name} uid 0\nset_inode_field /{name} gid 0\n" for name in modes
        )
        run([_sbin("debugfs"), "-w", "-f", "-", str(image)], input=commands, timeout=60)
        os.chmod(image, 0o600)
        os.replace(image, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _sbin(program: str) -> str:
    # Debian leaves /usr/sbin off ordinary users' PATH, but mkfs.ext4 and debugfs work
    # without root on image files.
    found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    return found or which(program, package="e2fsprogs")


def _check_authorized_keys(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        raise InvalidInput("the seed needs a public key for the vmkit user, got none")
    for line in lines:
        if not _PUBLIC_KEY.match(line):
            raise InvalidInput(
                f"{line[:40]!r} is not an OpenSSH public key line",
                hint="pass the content of a .pub file, e.g. 'ssh-ed25519 AAAA... comment'",
            )
    return "\n".join(lines) + "\n"


def _check_hostname(hostname: str) -> None:
    if not _HOSTNAME.match(hostname):
        raise InvalidInput(
            f"{hostname!r} is not a valid hostname",
            hint="use lowercase letters, digits and '-' (1-63 per dot-separated part)",
        )


def _read_host_key(host_key: Path) -> tuple[str, str]:
    public_path = host_key.with_name(host_key.name + ".pub")
    for p in (host_key, public_path):
        if not p.is_file():
            raise NotFound(
                f"host key file {p} does not exist",
                hint="make the pair with vmkit.guest.keys.generate(path, comment)",
            )
    private = host_key.read_text(encoding="utf-8")
    if "PRIVATE KEY-----" not in private:
        raise InvalidInput(f"{host_key} is not an OpenSSH private key")
    public = public_path.read_text(encoding="utf-8").strip()
    if not public.startswith("ssh-ed25519 ") or not _PUBLIC_KEY.match(public):
        raise InvalidInput(
            f"{public_path} is not an ed25519 public key",
            hint="the guest's sshd only offers ssh_host_ed25519_key",
        )
    return private, public + "\n"
