"""Run the fieldlab CLI as python -m fieldlab."""
import sys

from .cli import main

sys.exit(main())
