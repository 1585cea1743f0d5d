"""(site, seq) de-duplication state: interval arithmetic, the pending layer, durability, bounded size."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from ingest.dedup import SeenSeqs, SeqIntervals


def test_intervals_merge_touching_ranges() -> None:
    iv = SeqIntervals()
    for seq in (5, 7, 6, 1, 2, 10):
        iv.add(seq)
    assert iv.pairs() == [(1, 2), (5, 7), (10, 10)]
    iv.add_range(3, 4)
    assert iv.pairs() == [(1, 7), (10, 10)]
    iv.add_range(8, 20)
    assert iv.pairs() == [(1, 20)]
    assert 20 in iv and 21 not in iv and 0 not in iv
    assert iv.high_water_mark == 20


def test_intervals_match_a_plain_set_on_random_arrivals() -> None:
    rng = random.Random(7)
    iv, reference = SeqIntervals(), set()
    for _ in range(3000):
        lo = rng.randint(1, 2000)
        hi = lo + rng.randint(0, 5)
        iv.add_range(lo, hi)
        reference.update(range(lo, hi + 1))
    assert all((seq in iv) == (seq in reference) for seq in range(0, 2100))
    pairs = iv.pairs()
    assert all(a[1] + 1 < b[0] for a, b in zip(pairs, pairs[1:]))      # disjoint and not touching
    assert SeqIntervals.from_blob(iv.to_blob()).pairs() == pairs


def test_pending_is_visible_until_rollback_and_durable_after_commit(tmp_path: Path) -> None:
    seen = SeenSeqs(tmp_path)
    seen.mark("s1", 1)
    seen.mark("s1", 2)
    assert seen.seen("s1", 2) and not seen.seen("s2", 2)
    seen.rollback()
    assert not seen.seen("s1", 1)
    for seq in (1, 2, 3, 7):
        seen.mark("s1", seq)
    seen.mark("s2", 40)
    seen.commit()
    seen.close()
    again = SeenSeqs(tmp_path)
    assert again.intervals("s1") == [(1, 3), (7, 7)]
    assert again.high_water_mark("s2") == 40
    assert again.seen("s1", 3) and not again.seen("s1", 5)
    assert again.site_count == 2


def test_window_is_bounded_by_forgetting_the_oldest_intervals(tmp_path: Path) -> None:
    seen = SeenSeqs(tmp_path, max_intervals_per_site=3)
    for seq in (1, 3, 5, 7, 9):                      # five separate intervals (another worker has the gaps)
        seen.mark("s", seq)
    seen.commit()
    assert seen.intervals("s") == [(5, 5), (7, 7), (9, 9)]
    assert seen.forgotten == 2
    # a forgotten seq is no longer known: it would be written again (Prometheus ignores the identical sample)
    assert not seen.seen("s", 1) and seen.seen("s", 9)


# -- loss: seq gaps not filled within the horizon ------------------------------------------------------------------

class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _commit(seen: SeenSeqs, site: str, seqs: range | list[int]) -> None:
    for seq in seqs:
        seen.mark(site, seq)
    seen.commit()


def test_a_gap_is_counted_lost_once_the_horizon_passed_and_only_once(tmp_path: Path) -> None:
    clock = _Clock(1_000_000.0)
    seen = SeenSeqs(tmp_path, loss_horizon_ms=600_000, clock=clock)
    _commit(seen, "s1", range(1, 101))
    clock.now += 10
    _commit(seen, "s1", range(131, 201))                      # 101..130 missing: 30 seqs
    _commit(seen, "s2", range(1, 51))
    assert seen.account_losses() == {}                        # the horizon has not passed
    clock.now += 300
    _commit(seen, "s1", range(111, 116))                      # a late replay fills 5 of them
    clock.now += 301
    assert seen.account_losses() == {"s1": 25}
    assert seen.account_losses() == {}                        # never twice
    clock.now += 3600
    assert seen.account_losses() == {}
    seen.close()
    again = SeenSeqs(tmp_path, loss_horizon_ms=600_000, clock=clock)   # nor after a restart
    _commit(again, "s1", range(201, 300))
    clock.now += 601
    assert again.account_losses() == {}


def test_a_gap_filled_within_the_horizon_is_not_lost_and_the_start_of_the_stream_is_no_gap(tmp_path: Path) -> None:
    clock = _Clock(1_000_000.0)
    seen = SeenSeqs(tmp_path, loss_horizon_ms=600_000, clock=clock)
    _commit(seen, "s1", range(500, 600))                      # the worker joined mid-stream: 1..499 is not a gap
    _commit(seen, "s1", range(610, 700))
    clock.now += 100
    _commit(seen, "s1", range(600, 610))                      # the broker redelivered the rest in time
    clock.now += 600
    assert seen.account_losses() == {}


def test_the_group_view_counts_only_what_no_worker_wrote_and_survives_a_restart(tmp_path: Path) -> None:
    clock = _Clock(1_000_000.0)
    accountant = SeenSeqs(tmp_path / "a", loss_horizon_ms=600_000, clock=clock, losses="group")
    alone = SeenSeqs(tmp_path / "b", loss_horizon_ms=600_000, clock=clock)     # the same share, its own view
    for seen in (accountant, alone):
        _commit(seen, "s1", [s for s in range(1, 301) if s % 20 < 10])         # its share: half the stream
    accountant.merge_peer("s1", [(s, s + 9) for s in range(10, 300, 20) if s != 150])   # the other worker's
    accountant.commit()                                                        # ... but for 150..159: lost
    clock.now += 601
    assert accountant.account_losses() == {"s1": 10}
    assert alone.account_losses() == {"s1": 150}          # what one worker alone would count: the other's half
    accountant.close()
    again = SeenSeqs(tmp_path / "a", loss_horizon_ms=600_000, clock=clock, losses="group")
    again.merge_peer("s1", [(301, 400)])
    again.commit()
    clock.now += 601
    assert again.account_losses() == {}                   # nothing new lost, nothing counted twice
    assert again.intervals("s1")[-2:] == [(280, 289), (300, 300)]   # its own de-dup state: only what it wrote


def test_a_worker_that_is_not_the_accountant_counts_nothing(tmp_path: Path) -> None:
    clock = _Clock(1_000_000.0)
    seen = SeenSeqs(tmp_path, loss_horizon_ms=600_000, clock=clock, losses="none")
    _commit(seen, "s1", range(1, 11))
    _commit(seen, "s1", range(50, 60))
    seen.merge_peer("s1", [(11, 49)])                     # ignored: it keeps no group view
    clock.now += 601
    assert seen.account_losses() == {} and seen.intervals("s1") == [(1, 10), (50, 59)]
    with pytest.raises(ValueError, match="losses must be one of own, group, none"):
        SeenSeqs(tmp_path / "x", losses="all")
