"""Providers by name, imported lazily so optional dependencies stay optional."""

from __future__ import annotations

import importlib

from vmkit.errors import InvalidInput
from vmkit.providers.base import Provider

_PROVIDERS = {
    "qemu": ("vmkit.providers.qemu", "QemuProvider"),
    "virtualbox": ("vmkit.providers.virtualbox", "VirtualBoxProvider"),
    "vagrant": ("vmkit.providers.vagrant", "VagrantProvider"),
    "ssh": ("vmkit.providers.sshhost", "SSHHostProvider"),
}


def names() -> list[str]:
    return list(_PROVIDERS)


def get(name: str) -> Provider:
    """A provider instance by name; ``InvalidInput`` listing the known ones otherwise."""
    try:
        module, cls = _PROVIDERS[name]
    except KeyError:
        raise InvalidInput(
            f"unknown provider {name!r}", hint=f"use one of: {', '.join(_PROVIDERS)}"
        ) from None
    provider: Provider = getattr(importlib.import_module(module), cls)()
    return provider
