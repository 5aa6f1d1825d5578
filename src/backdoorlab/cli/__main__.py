"""``python -m backdoorlab.cli``: the same as the ``backdoorlab`` command."""
import sys

from . import main

sys.exit(main())
