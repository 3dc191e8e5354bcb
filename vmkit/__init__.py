"""vmkit: small Linux VMs with live shared folders and port forwards, and Docker inside over SSH.

    import vmkit
    vm = vmkit.up("demo")
    vm.share("~/data")
    vm.forward(8888)

Every error is a ``vmkit.VmkitError`` (see ``vmkit.errors`` for the tree).
"""

from vmkit.errors import VmkitError
from vmkit.host.runner import Result
from vmkit.providers.base import Status, VMState
from vmkit.state import ForwardSpec, ShareSpec
from vmkit.vm import VM, attach, create, get, list_vms, resolve, up

# ``open`` mirrors docker-py's from_env/DockerClient(base_url): a VM by address.
from vmkit.vm import open_vm as open

__all__ = [
    "VM",
    "ForwardSpec",
    "Result",
    "ShareSpec",
    "Status",
    "VMState",
    "VmkitError",
    "attach",
    "create",
    "get",
    "list_vms",
    "open",
    "resolve",
    "up",
]
