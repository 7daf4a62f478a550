from loopstream.ratelimit import TokenBuckets


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_burst_then_sustained_rate():
    clock = Clock()
    tb = TokenBuckets(rate=10, burst=20, clock=clock)
    assert all(tb.take("k") == 0 for _ in range(20))
    wait = tb.take("k")
    assert abs(wait - 0.1) < 1e-6
    clock.t += 0.1
    assert tb.take("k") == 0
    assert tb.take("k") > 0


def test_keys_are_independent():
    tb = TokenBuckets(rate=1, burst=1, clock=Clock())
    assert tb.take("a") == 0
    assert tb.take("a") > 0
    assert tb.take("b") == 0


def test_zero_rate_turns_the_limit_off():
    tb = TokenBuckets(rate=0, burst=1, clock=Clock())
    assert all(tb.take("k", 1000) == 0 for _ in range(100))


def test_a_batch_larger_than_the_burst_passes_on_a_full_bucket_and_leaves_debt():
    clock = Clock()
    tb = TokenBuckets(rate=10, burst=20, clock=clock)
    assert tb.take("k", 100) == 0          # never refused forever
    assert tb.take("k") > 0               # but paid for: 80 tokens of debt
    clock.t += 8.0                         # debt repaid at 10/s
    assert tb.take("k") > 0
    clock.t += 0.11
    assert tb.take("k") == 0


def test_refused_requests_cost_nothing():
    clock = Clock()
    tb = TokenBuckets(rate=1, burst=2, clock=clock)
    tb.take("k", 2)
    for _ in range(50):
        assert tb.take("k") > 0
    clock.t += 1.0
    assert tb.take("k") == 0


def test_key_table_is_bounded():
    clock = Clock()
    tb = TokenBuckets(rate=1, burst=5, clock=clock, max_keys=100)
    for i in range(1000):
        tb.take(f"k{i}")
        clock.t += 0.001
    assert len(tb._buckets) <= 100
