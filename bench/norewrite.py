"""``python bench/norewrite.py with|without ARGS...``: ``sconify ARGS...`` with the rewrite of
input layers that hold protected plaintext (as shipped), or without it (its plan emptied: the
output keeps that plaintext in its lower layers, as before issue 22). Both go through this same
wrapper, so the ``rewrite`` group compares the two on the same path. A bench tool only: an
image converted ``without`` is not confidential."""

import sys

import sconify.conversion.plan
from sconify.cli.main import main

if __name__ == "__main__":
    mode, sys.argv[1:] = sys.argv[1], sys.argv[2:]
    if mode == "without":
        sconify.conversion.plan.plan_rewrites = lambda fs, prefixes: []
    elif mode != "with":
        sys.exit("usage: norewrite.py with|without ARGS...")
    main()
