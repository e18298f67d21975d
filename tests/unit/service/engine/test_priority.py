"""Caption threads run at a lower OS priority than classification (`caption_nice`)."""

from __future__ import annotations

import os
import threading

import pytest

from service.engine.core import lower_priority

pytestmark = pytest.mark.skipif(not hasattr(os, "setpriority"), reason="no setpriority here")


def _nice_in_thread(nice: int) -> tuple[int, int]:
    got: list[int] = []

    def run() -> None:
        lower_priority(nice)
        got.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        child: list[int] = []
        t = threading.Thread(target=lambda: child.append(
            os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        t.start()
        t.join()
        got.append(child[0])

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return got[0], got[1]


def test_the_calling_thread_alone_is_lowered_and_its_children_inherit() -> None:
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    own, child = _nice_in_thread(5)
    assert own == min(19, base + 5) and child == own
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # not this one
    assert _nice_in_thread(0) == (base, base)
