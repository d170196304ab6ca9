"""A warning log that a flood of bad input cannot flood: per key the first few lines, then one in many."""
from __future__ import annotations

import logging
from collections import Counter


class ThrottledLog:
    """`log(key, *args)` counts `key` and logs `template % (*args, count)` for the first `first` of each key, then
    every `every`th: an attacker sending garbage in a loop costs one counter increment per message, not a log line."""

    def __init__(self, logger: logging.Logger, template: str, first: int = 10, every: int = 1000):
        self.logger = logger
        self.template = template
        self.first = first
        self.every = every
        self.counts: Counter = Counter()

    def __call__(self, key: str, *args: object) -> None:
        self.counts[key] += 1
        n = self.counts[key]
        if n <= self.first or n % self.every == 0:
            self.logger.warning(self.template, *args, n)
