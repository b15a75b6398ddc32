"""The exit codes of ``ratos-fleet status``, ``plan`` and ``update``: one table, documented once.

0 and 3 are clean runs (nothing failed); scripts that only ask "did anything fail?" test for 1.
Busy printers (printing, paused, state unknown) and printers whose boards are held for an
attended flash are counted apart: their changes are pending (3), unless ``--fail-on-busy`` makes
them failures (1), for a farm that wants every printer done in the same run.
"""

from __future__ import annotations

CONVERGED = 0      # every printer converged; nothing to do (status, plan) or nothing left (update)
FAILED = 1         # some printers failed, were unreachable, not run, or (with --fail-on-busy) busy/held
BAD_INPUT = 2      # bad command line, inventory or scenario: nothing ran
CHANGES = 3        # no failure; changes pending (status, plan; busy or held printers) or made (update)
INTERRUPTED = 130  # SIGINT/SIGTERM: in-flight work finished, the rest not started, report written

HELP = """exit codes:
  0    every printer converged (Klipper at the pin, every board on it, config as written)
  1    some printers failed, were unreachable or not run (busy/held too with --fail-on-busy)
  2    bad input (arguments, inventory): nothing ran
  3    no failure, changes pending (status/plan, busy or held printers) or made (update)
  130  interrupted (Ctrl-C, SIGTERM): work in flight finished, report written"""
