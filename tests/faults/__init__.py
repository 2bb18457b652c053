"""Fault-injection suite: real Redis, the HTTP S3 endpoint and real worker processes."""
