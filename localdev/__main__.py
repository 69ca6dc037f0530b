import sys

from localdev.cli import main

sys.exit(main())
