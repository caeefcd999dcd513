"""Runs every test of this folder in a process of its own and fails if any fails.

Celery's in-process test worker keeps per-process state (the worker optimizations hold the
first app's task registry), so two apps' workers cannot follow each other in one process.
Run: python python/tests/run_each.py (the package and this folder are put on the path).
"""

import os
import subprocess
import sys
import time
import unittest

here = os.path.dirname(os.path.abspath(__file__))
package = os.path.dirname(here)


def ids(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from ids(item)
        else:
            yield item.id()


def main():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package, here, env.get("PYTHONPATH")]))
    sys.path[:0] = [package, here]
    tests = sorted(ids(unittest.defaultTestLoader.discover(here)))
    if not tests:
        print("no tests found")
        return 1
    failed = []
    for test in tests:
        started = time.monotonic()
        try:
            done = subprocess.run([sys.executable, "-m", "unittest", test], env=env, cwd=here,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
            code, output = done.returncode, done.stdout
        except subprocess.TimeoutExpired as exc:
            # A failed assertion inside a running test worker can leave it hanging on exit.
            code, output = "timeout", exc.stdout or b""
        took = time.monotonic() - started
        print("%s %s (%.1f s)" % ("ok  " if code == 0 else "FAIL", test, took))
        if code != 0:
            failed.append(test)
            print(output.decode(errors="replace"))
    print("%d tests, %d failed" % (len(tests), len(failed)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
