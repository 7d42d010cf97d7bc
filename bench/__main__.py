"""`python -m bench` / `make bench`; `python -m bench --smoke` for a seconds-long check."""

import sys

from bench.run import main

sys.exit(main())
