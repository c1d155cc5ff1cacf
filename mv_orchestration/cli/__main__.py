"""``python -m mv_orchestration.cli``: the ``mvo`` command."""

from mv_orchestration.cli import main

main()
