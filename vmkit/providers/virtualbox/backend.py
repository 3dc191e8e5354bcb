"""Which way vmkit talks to VirtualBox: the ``vboxapi`` SDK (via pyvbox) or VBoxManage.

``pip install vmkit[pyvbox]`` installs pyvbox, but pyvbox is only a wrapper: it needs the
``vboxapi`` module that VirtualBox's own SDK installer puts in place. Without it (the usual
case) VBoxManage is the only way. Every operation vmkit performs today goes through
VBoxManage either way; ``backend()`` reports what is available, for ``vmkit doctor`` and logs.
"""

from __future__ import annotations

import importlib
from typing import Literal

Backend = Literal["pyvbox", "vboxmanage"]


def backend() -> Backend:
    """``"pyvbox"`` when both pyvbox and VirtualBox's ``vboxapi`` import, else ``"vboxmanage"``."""
    for module in ("vboxapi", "virtualbox"):
        try:
            importlib.import_module(module)
        except Exception:
            # vboxapi raises more than ImportError when the SDK is half installed (COM/XPCOM errors).
            return "vboxmanage"
    return "pyvbox"
