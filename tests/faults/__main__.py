"""``python -m tests.faults --report``: run the fault suite and print the reliability table."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--report"]
    sys.exit(pytest.main([str(Path(__file__).resolve().parent), "-q", "-p", "no:cacheprovider", *args]))
