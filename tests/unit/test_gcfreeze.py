"""The heap alive at start-up is frozen out of the cyclic collector's sight."""

from __future__ import annotations

import gc

from ecg_gateway.gcfreeze import freeze_heap


def test_freeze_moves_the_live_heap_out_of_the_collector() -> None:
    gc.unfreeze()
    try:
        tracked = len(gc.get_objects())
        freeze_heap()
        assert gc.get_freeze_count() >= tracked * 0.9  # what was alive is now permanent
        assert len(gc.get_objects()) < tracked * 0.1  # so a full collection no longer walks it
        cycle: list[object] = []
        cycle.append(cycle)  # garbage made after the freeze is still collected
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
