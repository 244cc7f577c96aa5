"""One module per ``fieldlab`` command: ``add_parser(sub)`` adds its options, ``async run(args) -> int`` runs it.

fieldlab/cli.py lists them in order and owns ``main()`` and the exit codes. A module imports only argparse
and ``_common`` at its top; everything heavy is imported inside ``run()``, so ``--help`` and an edge agent
on a Pi load no gateway code (tests/system/test_cli.py)."""
