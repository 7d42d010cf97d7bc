"""Writes what it sees (pid, parent, directory, argv, environment) to $FORKEE_OUT, says
hello on stdout and stderr, waits for a signal if $FORKEE_WAIT is set, then exits with
$FORKEE_EXIT."""

import json
import os
import signal
import sys
from pathlib import Path


def main() -> int:
    Path(os.environ["FORKEE_OUT"]).write_text(json.dumps({
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "cwd": os.getcwd(),
        "argv": sys.argv,
        "name": __name__,
        "mark": os.environ.get("FORKEE_MARK"),
        "parent_only": os.environ.get("FORKEE_PARENT_ONLY"),
    }))
    print("hello on stdout", flush=True)
    print("hello on stderr", file=sys.stderr, flush=True)
    if os.environ.get("FORKEE_WAIT"):
        signal.pause()
    return int(os.environ.get("FORKEE_EXIT") or 0)


if __name__ == "__main__":
    sys.exit(main())
