"""``python -m mvp_core.transfer_engine`` is the CLI."""

import sys

from mvp_core.transfer_engine.cli import main

sys.exit(main())
