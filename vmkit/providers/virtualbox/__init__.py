"""Oracle VirtualBox through VBoxManage: provider, parsers, error table, discovery (`discover`)."""

from __future__ import annotations

from vmkit.providers.virtualbox import discover
from vmkit.providers.virtualbox.backend import backend
from vmkit.providers.virtualbox.provider import AdoptedVM, VirtualBoxProvider, vbox_name
from vmkit.providers.virtualbox.vboxmanage import VBoxManage

__all__ = ["AdoptedVM", "VBoxManage", "VirtualBoxProvider", "backend", "discover", "vbox_name"]
