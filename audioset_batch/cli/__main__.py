"""``python -m audioset_batch.cli``."""

from audioset_batch.cli import main

if __name__ == "__main__":
    main()
