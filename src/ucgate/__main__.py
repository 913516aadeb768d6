"""``python -m ucgate`` runs the same command as the ``ucgate`` script."""

from ucgate.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
