"""Boxes: the recipes, building them, the local store, bootable disks, the catalog and packaging.

The store's functions are re-exported here, so ``vmkit.boxes.find()`` is the box API.
"""

from vmkit.boxes.store import (
    Box,
    Recipe,
    build,
    ensure,
    find,
    list_boxes,
    load_recipe,
    recipes_dir,
    remove,
    stale_notice,
    verify,
)
from vmkit.host.arch import ARCHES

__all__ = [
    "ARCHES",
    "Box",
    "Recipe",
    "build",
    "ensure",
    "find",
    "list_boxes",
    "load_recipe",
    "recipes_dir",
    "remove",
    "stale_notice",
    "verify",
]
