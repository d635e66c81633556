import sys

from trainkit.reports.cli import main

sys.exit(main())
