"""declora.wire.liveness: who is live, who went down, whom to HELLO or PING, on a clock the test moves by hand."""
import pytest

from declora.wire.liveness import BACK, UP, Liveness, NeighbourLiveness
from declora.wire.protocol import Kind


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def tracker(neighbours=(1, 2), interval=1.0, missed=3):
    clock = FakeClock()
    return NeighbourLiveness(neighbours, Liveness(interval, missed), clock=clock), clock


def test_settings_are_checked():
    assert Liveness(0.5, 4).down_after_s == 2.0
    for bad in ({"heartbeat_interval_s": 0}, {"heartbeat_interval_s": float("inf")},
                {"missed_intervals_before_down": 0}):
        with pytest.raises(ValueError):
            Liveness(**bad)


def test_hearing_is_not_enough_an_answer_confirms():
    t, clock = tracker()
    assert t.heard(1, answer=False) is None
    assert t.live() == set()  # it reached us; whether our sends reach it is not known yet
    assert t.heard(1, answer=True) == UP
    assert t.heard(1, answer=True) is None  # already confirmed: nothing new
    assert t.live() == {1}


def test_unconfirmed_get_a_hello_once_per_interval_and_quiet_ones_a_ping():
    t, clock = tracker()
    assert t.poll() == ([], [(1, Kind.HELLO), (2, Kind.HELLO)])
    clock.now += 0.5
    assert t.poll() == ([], [])  # contacted less than an interval ago
    t.heard(1, answer=True)
    clock.now += 0.5
    assert t.poll() == ([], [(2, Kind.HELLO)])  # 1 spoke just now: no ping yet
    clock.now += 1.0
    assert t.poll() == ([], [(1, Kind.PING), (2, Kind.HELLO)])


def test_silence_past_the_limit_takes_a_neighbour_down_until_it_answers_again():
    t, clock = tracker(interval=1.0, missed=3)
    t.heard(1, answer=True)
    clock.now += 3.0
    assert t.live() == {1}  # exactly at the limit still counts
    assert t.poll() == ([], [(1, Kind.PING), (2, Kind.HELLO)])
    clock.now += 0.5
    assert t.live() == set()
    assert t.poll() == ([(1, 3.5)], []) and t.down == {1}
    clock.now += 0.5
    # Reported down once; being unconfirmed again, it now gets HELLOs, not PINGs.
    assert t.poll() == ([], [(1, Kind.HELLO), (2, Kind.HELLO)])
    t.heard(1, answer=False)
    assert t.live() == set() and t.down == {1}
    assert t.heard(1, answer=True) == BACK
    assert t.live() == {1} and t.down == set()


def test_bye_takes_a_neighbour_down_once():
    t, clock = tracker()
    t.heard(2, answer=True)
    assert t.said_bye(2) is True
    assert t.live() == set() and t.down == {2}
    assert t.said_bye(2) is False  # a second BYE is not a second down event
    assert t.heard(2, answer=True) == BACK
