"""``python -m apiforge``: the same as the ``apiforge`` command."""

from apiforge.cli import main

main()
