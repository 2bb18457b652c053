"""``python -m audioset_batch.cli``."""

from audioset_batch.cli import main

main()
