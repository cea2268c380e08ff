import sys

from unimedvl.cli import main

sys.exit(main())
