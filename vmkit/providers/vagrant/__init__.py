"""Vagrant: machines of Vagrant projects (VirtualBox or libvirt underneath), and Vagrantfiles.

``VagrantProvider`` drives ``vagrant`` through ``vmkit.host.runner`` (see ``cli`` for why not
python-vagrant); ``vagrantfile`` renders Vagrantfiles from templates with Ruby escaping.
"""

from __future__ import annotations

from vmkit.providers.vagrant.provider import (
    VagrantMachine,
    VagrantProvider,
    attach_record,
    parse_url,
)

__all__ = ["VagrantMachine", "VagrantProvider", "attach_record", "parse_url"]
