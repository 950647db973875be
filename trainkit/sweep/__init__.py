"""Hyper-parameter sweeps over recipe keys with Optuna (``trainkit sweep``, ``trainkit launch --sweep``).

Optuna is imported only inside the functions that need it, so ``trainkit --help`` stays quick
and trainkit works without the ``sweep`` extra installed.
"""
