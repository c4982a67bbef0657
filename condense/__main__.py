"""``python -m condense``: the same as the ``condense`` command."""
import sys

from condense.cli.main import main

sys.exit(main())
