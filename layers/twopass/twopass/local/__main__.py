import sys

from twopass.local.main import main

sys.exit(main())
