import sys

from twopass.worker.main import main

sys.exit(main())
