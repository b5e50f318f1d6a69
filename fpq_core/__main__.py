import sys

from fpq_core.cli import main

sys.exit(main())
