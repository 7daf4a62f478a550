from loopstream.sidecar.ratelimit import Budget, TokenBuckets


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


def test_a_batch_larger_than_the_burst_passes_on_a_full_bucket_and_leaves_bounded_debt():
    clock = Clock()
    tb = TokenBuckets(rate=10, burst=20, clock=clock)
    assert tb.take("k", 1000) == 0         # never refused forever
    assert tb.take("k") > 0               # but paid for: in debt ...
    clock.t += 2.0                         # ... of at most one burst (20 tokens at 10/s)
    assert tb.take("k") > 0
    clock.t += 0.11
    assert tb.take("k") == 0               # a 1000-event batch locked the key out for ~2 s, not 98 s


def test_take_all_charges_every_bucket_or_none():
    clock = Clock()
    tb = TokenBuckets(rate=10, burst=20, clock=clock)
    run, client = Budget(10, 20), Budget(100, 30)
    assert tb.take_all([("run:a", run, 20), ("client:x", client, 20)]) == (0.0, None)
    wait, key = tb.take_all([("run:b", run, 20), ("client:x", client, 20)])
    assert key == "client:x" and wait > 0           # the client's budget refuses a new run name
    assert tb.take_all([("run:b", run, 20)]) == (0.0, None)   # run:b was not charged by the refusal
    wait, key = tb.take_all([("run:a", run, 1), ("client:y", client, 1)])
    assert key == "run:a" and abs(wait - 0.1) < 1e-6
    assert tb.take_all([("client:y", client, 30)]) == (0.0, None)   # and client:y was not charged either


def test_a_budget_with_rate_zero_is_off():
    tb = TokenBuckets(rate=1, burst=1, clock=Clock())
    assert all(tb.take_all([("k", Budget(0, 1), 500)]) == (0.0, None) for _ in range(10))


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


def test_each_bucket_is_charged_its_own_cost():
    tb = TokenBuckets(rate=10, burst=20, clock=Clock())
    run, client = Budget(10, 20), Budget(100, 1000)
    for decoy in ("d1", "d2"):       # a batch of [decoy, victim x 9]: nine tokens of the victim's each time
        assert tb.take_all([(f"run:{decoy}", run, 1), ("run:victim", run, 9), ("client:x", client, 10)]) == (0.0, None)
    wait, key = tb.take_all([("run:d3", run, 1), ("run:victim", run, 9), ("client:x", client, 10)])
    assert key == "run:victim" and abs(wait - 0.7) < 1e-6      # 2 tokens left, 9 needed, 10/s
    assert tb.take_all([("run:d3", run, 20)]) == (0.0, None)    # the refused batch charged d3 nothing
