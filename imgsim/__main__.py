"""`python -m imgsim`: the imgsim command."""
import sys

from imgsim.cli import main

sys.exit(main())
