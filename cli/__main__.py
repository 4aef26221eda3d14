"""`python -m edgegen.cli`: the edgegen command."""
import sys

from edgegen.cli import main

sys.exit(main())
