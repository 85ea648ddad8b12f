"""Keep the cyclic garbage collector off the latency path.

A started daemon holds ~300k long-lived objects (torch, the model, SQLAlchemy, pydicom,
pynetdicom). Every full collection walks all of them with the GIL held: 150-550 ms on the
2-core bench host, during which no C-STORE is answered and no ORU is sent. pynetdicom's
server runs one every 60 associations (``AssociationServer.service_actions``), and Python's
own thresholds add more. :func:`freeze_heap` moves everything alive now into the permanent
generation (:func:`gc.freeze`), so later collections see only what was allocated since:
a full collection then takes well under a millisecond. Frozen objects are still freed by
reference counting; only a reference cycle among them would never be collected, which is
acceptable for objects that live as long as the process (decisions.md, issue #28).
"""

from __future__ import annotations

import gc


def freeze_heap() -> None:
    """Call once start-up work (imports, model load and warm-up) is done."""
    gc.collect()  # what is garbage now is freed, not frozen
    gc.freeze()
