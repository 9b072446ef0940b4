import sys

from coun_fast.cli import main

sys.exit(main())
