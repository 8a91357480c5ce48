"""``python -m twopass.cli``: the ``twopass`` command."""

import sys

from twopass.cli import main

sys.exit(main())
