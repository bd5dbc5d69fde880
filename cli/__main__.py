"""`python -m nanxi_tune.cli …` is `nanxi-tune …` (torchrun and detached runs start it so)."""

import sys

from nanxi_tune.cli.main import main

sys.exit(main())
