import sys

from trainkit.nightly.cli import main

sys.exit(main())
