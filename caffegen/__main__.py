import sys

from caffegen.cli import main

sys.exit(main())
