"""Decoding input records: a poll's records in, arrays and per-record reasons out."""
