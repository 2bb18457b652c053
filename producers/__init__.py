"""Producers put object URLs of new HDF5 files onto the queue."""
