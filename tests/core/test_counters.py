"""One variable's state: ops applied in any order, bases folded at any point, replicas merged.

Each property compares a `Counter` with a plain model: a set of held ops per origin, and a
base per origin that is the sum of a prefix of that origin's ops.
"""

from __future__ import annotations

from collections.abc import Iterable

from hypothesis import given, settings
from hypothesis import strategies as st

from crdtd.core.counters import Applied, Counter
from crdtd.core.ids import INT64_MAX, INT64_MIN, Origin

ORIGINS = [Origin(node, incarnation) for node in ("a", "b", "c") for incarnation in (1, 2)]
NONCE_MAX = 12

Op = tuple[Origin, int, int]

deltas = st.one_of(
    st.integers(min_value=-1000, max_value=1000),
    st.sampled_from([INT64_MIN, INT64_MAX, 0]),
)

# A set of ops with arbitrary nonces (holes included), each (origin, nonce) at most once.
op_sets = st.dictionaries(
    st.tuples(st.sampled_from(ORIGINS), st.integers(min_value=1, max_value=NONCE_MAX)),
    deltas,
    max_size=30,
).map(lambda ops: [(origin, nonce, delta) for (origin, nonce), delta in ops.items()])

# Per origin, the whole sequence of deltas for nonces 1..n, as a source issues them.
sequences = st.dictionaries(
    st.sampled_from(ORIGINS), st.lists(deltas, min_size=1, max_size=NONCE_MAX), max_size=4
)


def all_ops(seqs: dict[Origin, list[int]]) -> list[Op]:
    return [
        (origin, nonce, delta)
        for origin, seq in seqs.items()
        for nonce, delta in enumerate(seq, start=1)
    ]


def contiguous_mark(nonces: Iterable[int], base_upto: int = 0) -> int:
    held = set(nonces)
    mark = base_upto
    while mark + 1 in held:
        mark += 1
    return mark


def logs(counter: Counter) -> dict[Origin, dict[int, int]]:
    """The log per origin, by nonce, from its two parts (`Counter.dense`, `.sparse`)."""
    held: dict[Origin, dict[int, int]] = {}
    for origin, dense in counter.dense.items():
        first = counter.base_upto(origin) + 1
        held.setdefault(origin, {}).update(
            zip(range(first, first + len(dense)), dense, strict=True)
        )
    for origin, sparse in counter.sparse.items():
        log = held.setdefault(origin, {})
        assert not log.keys() & sparse.keys()
        log.update(sparse)
    return held


def check_invariants(counter: Counter) -> None:
    """The invariants the counters module promises after every call."""
    held = logs(counter)
    logged = [delta for log in held.values() for delta in log.values()]
    assert counter.value == counter.before + sum(logged)
    assert counter.before == sum(total for _, total in counter.bases.values())
    assert counter.log_len == len(logged)
    for origin, log in held.items():
        assert all(nonce > counter.base_upto(origin) for nonce in log)
    for origin in set(held) | set(counter.bases):
        expected = contiguous_mark(held.get(origin, {}), counter.base_upto(origin))
        assert counter.watermark(origin) == expected
        assert counter.base_upto(origin) + len(counter.dense.get(origin, ())) == expected
        sparse = counter.sparse.get(origin, {})
        assert all(nonce > expected + 1 for nonce in sparse)
        if sparse:
            assert counter.tops[origin] == max(sparse)
            held_above = held.get(origin, {}).keys() | set(range(expected + 1))
            assert counter.holes[origin] == holes(held_above, expected + 1, max(sparse))
        else:
            assert origin not in counter.holes and origin not in counter.tops
        log = held.get(origin, {})
        dense = sum(log[nonce] for nonce in range(counter.base_upto(origin) + 1, expected + 1))
        base_total = counter.bases.get(origin, (0, 0))[1]
        assert counter.prefix_total(origin, expected) == base_total + dense


def state(counter: Counter) -> tuple[object, ...]:
    return (
        counter.value,
        counter.before,
        counter.log_len,
        dict(sorted(counter.bases.items())),
        {origin: mark for origin, mark in sorted(counter.watermarks.items()) if mark},
        counter.history(),
    )


def model_state(
    held: Iterable[Op], bases: dict[Origin, tuple[int, int]]
) -> tuple[int, int, dict[Origin, int], list[Op]]:
    """Value, before, watermarks and history that held ops plus the best bases give."""
    held = set(held)
    log = sorted(
        (origin, nonce, delta)
        for origin, nonce, delta in held
        if nonce > bases.get(origin, (0, 0))[0]
    )
    before = sum(total for _, total in bases.values())
    marks = {}
    for origin in {op[0] for op in held} | set(bases):
        nonces = [nonce for o, nonce, _ in held if o == origin]
        mark = contiguous_mark(nonces, bases.get(origin, (0, 0))[0])
        if mark:
            marks[origin] = mark
    return before + sum(op[2] for op in log), before, marks, log


def observed(counter: Counter) -> tuple[int, int, dict[Origin, int], list[Op]]:
    marks = {origin: mark for origin, mark in counter.watermarks.items() if mark}
    return counter.value, counter.before, marks, counter.history()


def prefix(seqs: dict[Origin, list[int]], origin: Origin, upto: int) -> int:
    return sum(seqs[origin][:upto])


# --- order, duplication, interleaving ---------------------------------------------------


@given(op_sets, st.data())
@settings(max_examples=200, deadline=None)
def test_any_delivery_order_with_duplicates_gives_the_same_state(
    ops: list[Op], data: st.DataObject
) -> None:
    reference = Counter("x")
    for origin, nonce, delta in sorted(ops):
        assert reference.apply(origin, nonce, delta) is Applied.NEW

    duplicates = data.draw(st.lists(st.sampled_from(ops), max_size=20)) if ops else []
    delivery = data.draw(st.permutations(ops + duplicates))
    counter = Counter("x")
    results = []
    for origin, nonce, delta in delivery:
        results.append(counter.apply(origin, nonce, delta))
        check_invariants(counter)

    assert results.count(Applied.NEW) == len(ops)
    assert results.count(Applied.DUPLICATE) == len(duplicates)
    assert state(counter) == state(reference)
    assert observed(counter) == model_state(ops, {})
    assert counter.value == sum(op[2] for op in ops)


@given(op_sets, st.data())
@settings(max_examples=200, deadline=None)
def test_two_interleaved_deliveries_of_one_op_set_agree(ops: list[Op], data: st.DataObject) -> None:
    left, right = Counter("x"), Counter("x")
    # Two independent orders, stepped alternately: what one replica has seen says
    # nothing about the other.
    first = data.draw(st.permutations(ops))
    second = data.draw(st.permutations(ops + ops))
    schedule = data.draw(st.permutations([0] * len(first) + [1] * len(second)))
    streams = [iter(first), iter(second)]
    for which in schedule:
        origin, nonce, delta = next(streams[which])
        (left, right)[which].apply(origin, nonce, delta)
    assert state(left) == state(right)


def test_value_is_before_plus_log_after_each_apply() -> None:
    counter = Counter("x")
    for nonce, delta in [(3, 5), (1, -2), (2, 7), (5, 1), (4, 100)]:
        counter.apply(ORIGINS[0], nonce, delta)
        check_invariants(counter)
    assert counter.value == 111
    assert counter.watermark(ORIGINS[0]) == 5


def test_watermark_stops_at_the_first_hole_and_jumps_when_it_fills() -> None:
    counter = Counter("x")
    origin = ORIGINS[0]
    counter.apply(origin, 1, 1)
    counter.apply(origin, 3, 1)
    counter.apply(origin, 4, 1)
    assert counter.watermark(origin) == 1
    counter.apply(origin, 2, 1)
    assert counter.watermark(origin) == 4
    assert counter.watermark(ORIGINS[1]) == 0


# --- bases ----------------------------------------------------------------------------


@given(sequences, st.data())
@settings(max_examples=200, deadline=None)
def test_bases_adopted_at_any_point_among_ops_give_the_value_of_all_ops(
    seqs: dict[Origin, list[int]], data: st.DataObject
) -> None:
    ops = all_ops(seqs)
    base_items = data.draw(
        st.lists(
            st.sampled_from(sorted(seqs)).flatmap(
                lambda origin: st.tuples(
                    st.just(origin), st.integers(min_value=1, max_value=len(seqs[origin]))
                )
            ),
            max_size=8,
        )
        if seqs
        else st.just([])
    )
    duplicates = data.draw(st.lists(st.sampled_from(ops), max_size=10)) if ops else []
    # A step is ("op", origin, nonce, delta) or ("base", origin, upto, 0).
    steps = [("op", *op) for op in ops + duplicates]
    steps += [("base", origin, upto, 0) for origin, upto in base_items]

    counter = Counter("x")
    best: dict[Origin, tuple[int, int]] = {}
    for kind, origin, number, delta in data.draw(st.permutations(steps)):
        if kind == "op":
            counter.apply(origin, number, delta)
        else:
            upto = number
            total = prefix(seqs, origin, upto)
            adopted = counter.adopt_base(origin, upto, total)
            assert adopted == (upto > best.get(origin, (0, 0))[0])
            if adopted:
                best[origin] = (upto, total)
        check_invariants(counter)

    assert counter.value == sum(op[2] for op in ops)
    assert observed(counter) == model_state(ops, best)
    assert dict(counter.bases) == best


@given(sequences, st.data())
@settings(max_examples=200, deadline=None)
def test_bases_with_only_some_ops_delivered_count_each_op_exactly_once(
    seqs: dict[Origin, list[int]], data: st.DataObject
) -> None:
    ops = all_ops(seqs)
    delivered = data.draw(st.lists(st.sampled_from(ops), max_size=40)) if ops else []
    bases = {
        origin: data.draw(st.integers(min_value=0, max_value=len(seq)), label=f"base {origin}")
        for origin, seq in seqs.items()
    }
    steps = [("op", *op) for op in delivered]
    steps += [("base", origin, upto, 0) for origin, upto in bases.items() if upto]
    counter = Counter("x")
    for kind, origin, number, delta in data.draw(st.permutations(steps)):
        if kind == "op":
            counter.apply(origin, number, delta)
        else:
            counter.adopt_base(origin, number, prefix(seqs, origin, number))
        check_invariants(counter)

    expected_bases = {o: (k, prefix(seqs, o, k)) for o, k in bases.items() if k}
    assert observed(counter) == model_state(delivered, expected_bases)


def test_adopting_a_lower_or_equal_base_changes_nothing() -> None:
    counter = Counter("x")
    origin = ORIGINS[0]
    for nonce in range(1, 6):
        counter.apply(origin, nonce, nonce)
    assert counter.adopt_base(origin, 3, 6)
    snapshot = state(counter)
    assert not counter.adopt_base(origin, 3, 6)
    assert not counter.adopt_base(origin, 2, 3)
    assert state(counter) == snapshot
    assert counter.value == 15


def test_an_op_at_or_below_the_base_is_a_duplicate() -> None:
    counter = Counter("x")
    origin = ORIGINS[0]
    counter.adopt_base(origin, 4, 10)
    for nonce in range(1, 5):
        assert counter.apply(origin, nonce, 99) is Applied.DUPLICATE
    assert counter.value == 10
    assert counter.watermark(origin) == 4
    assert counter.apply(origin, 5, 1) is Applied.NEW
    assert counter.value == 11


def test_a_base_above_held_ops_extends_the_watermark_through_the_log() -> None:
    counter = Counter("x")
    origin = ORIGINS[0]
    for nonce in (3, 4, 6):
        counter.apply(origin, nonce, 1)
    assert counter.watermark(origin) == 0
    counter.adopt_base(origin, 2, 20)
    assert counter.watermark(origin) == 4
    assert counter.value == 23
    assert counter.history() == [(origin, 3, 1), (origin, 4, 1), (origin, 6, 1)]


def test_totals_far_beyond_int64_are_kept_exactly() -> None:
    counter = Counter("x")
    for i, origin in enumerate(ORIGINS[:3]):
        counter.adopt_base(origin, 10, 2**200 * (i + 1))
    counter.apply(ORIGINS[0], 11, INT64_MAX)
    assert counter.value == 6 * 2**200 + INT64_MAX
    check_invariants(counter)


# --- merging replicas that folded different prefixes ------------------------------------


@given(sequences, st.data())
@settings(max_examples=200, deadline=None)
def test_replicas_that_folded_different_prefixes_merge_to_identical_state(
    seqs: dict[Origin, list[int]], data: st.DataObject
) -> None:
    ops = all_ops(seqs)
    replicas = []
    for label in ("left", "right"):
        held = data.draw(st.lists(st.sampled_from(ops), max_size=40), label) if ops else []
        counter = Counter("x")
        for op in data.draw(st.permutations(held)):
            counter.apply(*op)
        # Fold, per origin, some prefix this replica holds (as a barrier would).
        for origin in sorted(seqs):
            upto = data.draw(st.integers(0, counter.watermark(origin)), f"{label} fold {origin}")
            if upto > counter.base_upto(origin):
                counter.adopt_base(origin, upto, counter.prefix_total(origin, upto))
                check_invariants(counter)
        replicas.append((counter, set(held)))
    (left, left_held), (right, right_held) = replicas

    # Exchange everything each holds, bases and logged ops, in any interleaving.
    def offer(counter: Counter) -> list[tuple[str, tuple[Origin, int, int]]]:
        offers = [("base", (o, upto, total)) for o, (upto, total) in counter.bases.items()]
        return offers + [("op", op) for op in counter.history()]

    for target, source in ((left, offer(right)), (right, offer(left))):
        for kind, (origin, number, amount) in data.draw(st.permutations(source)):
            if kind == "base":
                target.adopt_base(origin, number, amount)
            else:
                target.apply(origin, number, amount)
            check_invariants(target)

    assert state(left) == state(right)
    union = left_held | right_held
    assert left.value == sum(op[2] for op in union)


# --- missing and ops_in -----------------------------------------------------------------

held_sets = st.sets(st.integers(min_value=1, max_value=40), max_size=30)


def holes(held: set[int], start: int, high: int) -> list[tuple[int, int]]:
    """Maximal runs of nonces in [start, high] that are not in *held*."""
    runs: list[tuple[int, int]] = []
    for nonce in range(start, high + 1):
        if nonce in held:
            continue
        if runs and runs[-1][1] == nonce - 1:
            runs[-1] = (runs[-1][0], nonce)
        else:
            runs.append((nonce, nonce))
    return runs


@given(
    held_sets,
    st.integers(min_value=0, max_value=10),
    st.integers(min_value=0, max_value=50),
    st.integers(min_value=1, max_value=8),
)
@settings(max_examples=200, deadline=None)
def test_missing_returns_exactly_the_holes_up_to_high_bounded_by_ranges_max(
    held: set[int], base_upto: int, high: int, ranges_max: int
) -> None:
    origin = ORIGINS[0]
    counter = Counter("x")
    for nonce in sorted(held):
        counter.apply(origin, nonce, 1)
    if base_upto:
        counter.adopt_base(origin, base_upto, base_upto)
    covered = held | set(range(1, base_upto + 1))
    start = counter.watermark(origin) + 1

    ranges = counter.missing(origin, high, ranges_max)

    assert ranges == holes(covered, start, high)[:ranges_max]
    for first, last in ranges:
        assert start <= first <= last <= high
        assert not covered & set(range(first, last + 1))


@given(
    st.sets(st.integers(min_value=2, max_value=400), min_size=100, max_size=300),
    st.integers(min_value=0, max_value=60),
    st.integers(min_value=1, max_value=8),
)
@settings(max_examples=200, deadline=None)
def test_missing_with_many_ops_above_a_hole_and_a_low_high_walks_to_the_same_holes(
    held: set[int], high: int, ranges_max: int
) -> None:
    """Many held ops far above *high*: `missing` walks the nonces instead of sorting
    the held ones, and finds the same holes."""
    origin = ORIGINS[0]
    counter = Counter("x")
    for nonce in held:
        counter.apply(origin, nonce, 1)
    start = counter.watermark(origin) + 1
    assert counter.missing(origin, high, ranges_max) == holes(held, start, high)[:ranges_max]


def test_missing_for_an_unknown_origin_is_everything_up_to_high() -> None:
    assert Counter("x").missing(ORIGINS[0], 5, 10) == [(1, 5)]
    assert Counter("x").missing(ORIGINS[0], 0, 10) == []


def test_missing_stops_after_ranges_max_ranges() -> None:
    counter = Counter("x")
    for nonce in range(2, 21, 2):  # holds the even nonces: 1, 3, 5, ... are missing
        counter.apply(ORIGINS[0], nonce, 1)
    assert counter.missing(ORIGINS[0], 20, 3) == [(1, 1), (3, 3), (5, 5)]
    assert len(counter.missing(ORIGINS[0], 20, 100)) == 10


@given(
    held_sets,
    st.integers(min_value=0, max_value=10),
    st.one_of(st.integers(min_value=-2, max_value=45), st.just(2**64 - 1)),
    st.one_of(st.integers(min_value=-2, max_value=45), st.just(2**64 - 1)),
)
@settings(max_examples=200, deadline=None)
def test_ops_in_returns_exactly_the_logged_ops_in_range_ascending(
    held: set[int], base_upto: int, first: int, last: int
) -> None:
    origin = ORIGINS[1]
    counter = Counter("x")
    for nonce in sorted(held, reverse=True):
        counter.apply(origin, nonce, nonce * 10)
    counter.apply(ORIGINS[2], 3, 1)  # another origin's ops never leak in
    if base_upto:
        counter.adopt_base(origin, base_upto, 0)
    expected = [(n, n * 10) for n in sorted(held) if n > base_upto and first <= n <= last]
    assert list(counter.ops_in(origin, first, last)) == expected


def test_ops_in_for_an_unknown_origin_is_empty() -> None:
    assert list(Counter("x").ops_in(ORIGINS[0], 1, 10)) == []


# --- conflicts --------------------------------------------------------------------------


@given(op_sets.filter(bool), st.data())
@settings(max_examples=200, deadline=None)
def test_a_conflicting_op_is_reported_and_changes_nothing(
    ops: list[Op], data: st.DataObject
) -> None:
    counter = Counter("x")
    for op in ops:
        counter.apply(*op)
    origin, nonce, delta = data.draw(st.sampled_from(ops))
    other = data.draw(deltas.filter(lambda d: d != delta))
    snapshot = state(counter)

    assert counter.apply(origin, nonce, other) is Applied.CONFLICT
    assert state(counter) == snapshot
    assert counter.apply(origin, nonce, delta) is Applied.DUPLICATE
    assert state(counter) == snapshot


def test_history_orders_by_origin_then_nonce() -> None:
    counter = Counter("x")
    b, a = Origin("b", 1), Origin("a", 1)
    for origin, nonce in [(b, 2), (a, 3), (b, 1), (a, 1)]:
        counter.apply(origin, nonce, nonce)
    assert counter.history() == [(a, 1, 1), (a, 3, 3), (b, 1, 1), (b, 2, 2)]
    assert counter.origins() == [a, b]


@given(op_sets, st.data(), st.integers(min_value=1, max_value=7))
@settings(max_examples=200, deadline=None)
def test_pages_joined_are_the_history_whatever_the_holes_and_bases(
    ops: list[Op], data: st.DataObject, limit: int
) -> None:
    counter = Counter("x")
    for origin, nonce, delta in ops:
        counter.apply(origin, nonce, delta)
    for origin in data.draw(st.lists(st.sampled_from(ORIGINS), max_size=3)):
        if counter.watermark(origin) > counter.base_upto(origin):
            # A second base of one origin only ever covers more (a base is a prefix).
            lowest = counter.base_upto(origin) + 1
            upto = data.draw(st.integers(min_value=lowest, max_value=counter.watermark(origin)))
            counter.adopt_base(origin, upto, counter.prefix_total(origin, upto))
    joined: list[Op] = []
    after = None
    while True:
        page = counter.page(after, limit)
        assert len(page) <= limit
        joined += page
        if len(page) < limit:
            break
        after = page[-1][:2]
    assert joined == counter.history()


def test_version_changes_with_every_new_op_and_fold_and_only_then() -> None:
    counter = Counter("x")
    origin = ORIGINS[0]
    seen = [counter.version]
    counter.apply(origin, 1, 5)
    seen.append(counter.version)
    counter.apply(origin, 1, 5)  # a duplicate changes nothing
    counter.apply(origin, 1, 6)  # nor does a conflict
    seen.append(counter.version)
    counter.apply(origin, 2, 1)
    seen.append(counter.version)
    counter.adopt_base(origin, 1, 5)
    seen.append(counter.version)
    counter.adopt_base(origin, 1, 5)  # already covered
    seen.append(counter.version)
    assert seen == [0, 1, 1, 2, 3, 3]


# --- runs -------------------------------------------------------------------------------


@given(op_sets, st.lists(deltas, min_size=1, max_size=8), st.sampled_from(ORIGINS), st.data())
@settings(max_examples=300, deadline=None)
def test_a_run_extends_exactly_as_its_ops_one_by_one_or_not_at_all(
    ops: list[Op], run: list[int], origin: Origin, data: st.DataObject
) -> None:
    """`extend` takes a run whole exactly where applying its ops one by one would make
    each new (above the watermark, holes or not); elsewhere it changes nothing."""
    counter, one_by_one = Counter("x"), Counter("x")
    for op in ops:
        counter.apply(*op)
        one_by_one.apply(*op)
    first = data.draw(st.integers(min_value=1, max_value=NONCE_MAX + 2))
    nonces = range(first, first + len(run))
    held = any(o == origin and nonce in nonces for o, nonce, _ in ops)
    expected = first > counter.watermark(origin) and not held
    before = state(counter)
    taken = counter.extend(origin, first, run)
    assert taken is expected
    if not taken:
        assert state(counter) == before
        return
    results = [one_by_one.apply(origin, first + k, d) for k, d in enumerate(run)]
    assert results == [Applied.NEW] * len(run)
    assert state(counter) == state(one_by_one)
    check_invariants(counter)


def test_a_run_at_or_below_the_watermark_or_over_a_held_op_is_not_taken() -> None:
    counter = Counter("x")
    origin = ORIGINS[0]
    assert not counter.extend(origin, 1, [])
    assert counter.extend(origin, 1, [1, 2])
    assert not counter.extend(origin, 2, [5])  # nonce 2 is held
    assert counter.extend(origin, 5, [10, 20])  # above a hole
    assert not counter.extend(origin, 4, [1, 1])  # over held nonce 5
    assert (counter.value, counter.watermark(origin)) == (33, 2)
    assert counter.extend(origin, 3, [4, 8])  # fills the hole: the ops above move over
    assert (counter.value, counter.watermark(origin), counter.sparse) == (45, 6, {})
    check_invariants(counter)
