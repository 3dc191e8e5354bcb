"""The QEMU provider."""

from vmkit.providers.qemu.provider import QemuProvider

__all__ = ["QemuProvider"]
