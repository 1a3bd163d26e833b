"""Input decoding, batch-shaped: a poll's records in, arrays and per-record reasons out.

windows.py decodes windows; readings.py samples and tags, which the assembler builds windows of.
"""
