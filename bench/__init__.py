"""`make bench`: shop measured against raw baselines of its own stack, in the same run.

`python -m bench` (or `make bench`) runs every scenario; `python -m bench --smoke` runs
each one for a fraction of a second to prove the harness works. Figures are reported,
never asserted.
"""
