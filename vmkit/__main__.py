"""``python -m vmkit``."""

from vmkit.cli.main import main

main()
