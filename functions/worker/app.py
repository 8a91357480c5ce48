"""Worker container entry point (the image runs ``python -m twopass.worker``; this is the same)."""

import sys

from twopass.worker.main import main

if __name__ == "__main__":
    sys.exit(main())
