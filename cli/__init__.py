"""The `faultwatch` command: `main` parses and dispatches, one module per group of commands."""

#     main.py     the parser; every user mistake ends as one line on stderr
#     offline.py  train, score, inspect, simulate: model files and CSV, no Kafka
#     replay.py   replay topics: recordings or a topic range into a topic
#     progress.py progress of long commands on stderr
#
# `faultwatch run` is the worker (`worker.service`); `faultwatch demo` lives in `demo`.
