"""``python -m etva ...`` runs the ``etva`` command line."""

import sys

from etva.cli import main

if __name__ == "__main__":
    sys.exit(main())
