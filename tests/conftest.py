"""Test-wide settings: never touch the network, no progress bars."""
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("SYNREF_NO_PROGRESS", "1")

# Let tests import shared helpers (tiny_models, tiny_clip) as top-level modules.
sys.path.insert(0, str(Path(__file__).resolve().parent))
