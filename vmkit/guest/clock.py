"""Setting a guest's clock to the host's, to within a one-way trip over SSH.

A quick-started guest (``vmkit.providers.qemu.quickstart``) wakes up with the clock of the boot
it was saved from, and its reseed sets it to the host's time as the host made the seed, about
a second late under emulation. Here the guest's shell starts first and says so; only then does
the host read its clock and send it, so sudo's and the shell's start-up under emulation (~0.4 s)
do not count.
"""

from __future__ import annotations

import time

import paramiko

from vmkit.errors import SSHError
from vmkit.guest.ssh import SSHSession

#: Runs as root in the guest: says it is ready, reads the host's time (seconds since the epoch,
#: as a decimal) and sets the clock to it.
_SCRIPT = (
    'echo ready; read -r t; case $t in *[!0-9.]*|"") exit 2;; esac; date -u -s "@$t" >/dev/null'
)


def set_from_host(session: SSHSession, *, timeout: float = 20.0) -> None:
    """Set the guest's clock to the host's; ``SSHError`` if it could not be done."""
    chan = session.open_channel(["sudo", "-n", "sh", "-c", _SCRIPT])
    try:
        chan.settimeout(timeout)
        said = b""
        while b"ready\n" not in said:
            data = chan.recv(64)
            if not data:
                break
            said += data
        if b"ready\n" not in said:
            raise SSHError("the guest did not start the command that sets its clock")
        chan.sendall(f"{time.time():.6f}\n".encode())
        chan.shutdown_write()
        code = chan.recv_exit_status()
    except (TimeoutError, paramiko.SSHException, OSError) as e:
        raise SSHError(f"setting the guest's clock failed: {e}") from e
    finally:
        chan.close()
    if code != 0:
        raise SSHError(f"setting the guest's clock failed (exit {code})")
