"""``python -m synref`` (also what ``accelerate launch -m synref`` runs)."""
import sys

from .cli import main

sys.exit(main())
