"""A stand-in VBoxManage that replays recorded output verbatim (for tests; no VirtualBox here).

``$VBOXREPLAY`` names a JSON file: a list of ``{"argv": [...], "stdout": FILE, "stderr": TEXT,
"exit": N}``. The first entry whose ``argv`` patterns (``fnmatch``, one per argument) match the
call's arguments wins: its recorded file is printed byte for byte. Calls are appended to
``$VBOXREPLAY.log`` as JSON lines; a call nothing matches exits 2 with a syntax-error text, as
VBoxManage does for a command it does not know.
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys


def main() -> int:
    table_path = os.environ["VBOXREPLAY"]
    args = sys.argv[1:]
    with open(table_path + ".log", "a", encoding="utf-8") as log:
        log.write(json.dumps(args) + "\n")
    with open(table_path, encoding="utf-8") as f:
        table = json.load(f)
    for entry in table:
        pats = entry["argv"]
        if len(pats) == len(args) and all(
            fnmatch.fnmatchcase(a, p) for a, p in zip(args, pats, strict=True)
        ):
            if entry.get("stdout"):
                with open(entry["stdout"], "rb") as out:
                    sys.stdout.buffer.write(out.read())
            sys.stderr.write(entry.get("stderr", ""))
            return int(entry.get("exit", 0))
    sys.stderr.write(f"VBoxManage: error: Syntax error: Invalid command '{' '.join(args)}'\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
