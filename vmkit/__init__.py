"""vmkit: small Linux VMs with live shared folders and port forwards, and Docker inside over SSH."""

from vmkit.errors import VmkitError

__all__ = ["VmkitError"]
