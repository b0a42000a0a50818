"""Signals held while a blocking syscall runs reach their handlers only where it waits."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from llmos.userland import signal_deferral


class Caught(Exception):
    pass


@pytest.fixture
def raising_sigint():
    """A SIGINT handler that raises Caught, as Ctrl-C's KeyboardInterrupt would."""
    def handler(signum, frame):
        raise Caught

    previous = signal.signal(signal.SIGINT, handler)
    yield handler
    signal.signal(signal.SIGINT, previous)


def test_a_held_signal_is_delivered_when_the_hold_ends(raising_sigint):
    held = signal_deferral.hold()
    assert held
    os.kill(os.getpid(), signal.SIGINT)  # noted, not raised, while held
    for _ in range(1000):
        pass
    with pytest.raises(Caught):
        signal_deferral.release(held)
    assert signal.getsignal(signal.SIGINT) is raising_sigint


def test_an_interruptible_block_delivers_what_came_before_it_and_inside_it(raising_sigint):
    held = signal_deferral.hold()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(Caught), signal_deferral.interruptible(held):
            pass  # delivered on entry
        with pytest.raises(Caught), signal_deferral.interruptible(held):
            os.kill(os.getpid(), signal.SIGINT)  # delivered at once
            for _ in range(1000):
                pass
    finally:
        signal_deferral.release(held)
    assert signal.getsignal(signal.SIGINT) is raising_sigint


def test_holds_nest_and_only_the_outermost_puts_the_handlers_back(raising_sigint):
    outer = signal_deferral.hold()
    inner = signal_deferral.hold()
    signal_deferral.release(inner)
    assert signal.getsignal(signal.SIGINT) is not raising_sigint
    signal_deferral.release(outer)
    assert signal.getsignal(signal.SIGINT) is raising_sigint


def test_a_swap_left_behind_by_a_cut_hold_heals_when_its_signal_comes(raising_sigint):
    # A raising handler cut a hold after the swap: ours stays installed with nobody holding.
    signal_deferral.hold()
    signal_deferral._State.depth = 0  # what the cut leaves
    with pytest.raises(Caught):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):
            pass
    assert signal.getsignal(signal.SIGINT) is raising_sigint


def test_other_threads_hold_nothing(raising_sigint):
    results = []
    thread = threading.Thread(target=lambda: results.append(signal_deferral.hold()))
    thread.start()
    thread.join()
    assert results == [False]
    signal_deferral.release(False)
    assert signal.getsignal(signal.SIGINT) is raising_sigint
