"""TensorFlow's process-wide settings, applied once before the first model runs in a process."""

from __future__ import annotations

import logging

from model.native_logs import import_tensorflow

log = logging.getLogger("audioset.model")


def configure_tensorflow(threads: int) -> None:
    """``threads`` for each operation, one operation at a time: on a worker, processes are the parallelism."""
    tf = import_tensorflow()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already ran in this process (the solo pool, tests): keep its threads
        log.debug("TensorFlow already initialised; thread settings unchanged")
