"""Workshop bundles: a box, Docker images and Vagrant boxes in one folder, verified and loaded offline.

``create`` makes the folder, ``verify`` checks it, ``load`` puts it to use; the format of
``bundle.json`` is in docs/bundles.md. Built on the box cache (``vmkit.boxes.store``), image
load/save (``vmkit.docker.images``) and ``vagrant box add``.
"""

from vmkit.bundles.loading import LoadReport, load, verify
from vmkit.bundles.make import BytesProgress, create
from vmkit.bundles.manifest import FORMAT, Bundle, Item, read

__all__ = [
    "FORMAT",
    "Bundle",
    "BytesProgress",
    "Item",
    "LoadReport",
    "create",
    "load",
    "read",
    "verify",
]
