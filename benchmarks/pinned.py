"""`python -m benchmarks.pinned CPUS MODULE ARGS...`: run `python -m MODULE ARGS` pinned to CPUS."""

import os
import runpy
import sys


def main() -> None:
    cpus, module, *args = sys.argv[1:]
    os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
