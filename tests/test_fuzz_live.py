"""A short run of the fuzzer (bench/fuzz.py) against a live Daphne: every property holds.

One fixed seed and one random seed, about 10 s each; the fuzzer starts its own redis-server and
Daphne processes. A failure names each failing case with the command that replays it.
"""

import random

import pytest

from bench import fuzz

FIXED_SEED = 6455


@pytest.mark.timeout(300)
def test_a_short_fuzz_finds_no_failure():
    seeds = [FIXED_SEED, random.SystemRandom().randrange(2**32)]
    report = fuzz.run(seeds, fuzz.Options(seconds=20, cleanup_every=100))
    text = report.text()
    print(text)
    assert len(report.results) >= 20, f"too few cases ran:\n{text}"
    assert not report.failures, f"the fuzzer found failures (seeds {seeds}):\n{text}"
