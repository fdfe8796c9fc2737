"""Run one command; write its wall time, peak RSS and exit code as JSON to OUT.

Usage: python -S bench/_spawn.py OUT ARGV...

Why a wrapper: Python's subprocess starts children with vfork/posix_spawn, and
Linux then folds the *parent's* peak RSS into the child's ru_maxrss at exec. A
benchmark that has loaded 300 MB of repodata would see that in every child.
This small process fork()s and exec()s instead, so the child's ru_maxrss is its
own, and it times spawn-to-reap without its own interpreter start-up.
"""

import json
import os
import sys
import time

out, argv = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - start
with open(out, "w") as handle:
    json.dump({"seconds": seconds, "maxrss_kib": usage.ru_maxrss, "rc": os.waitstatus_to_exitcode(status)}, handle)
