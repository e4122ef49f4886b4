"""Tune callbacks that belong to the driver process (the MLflow mirror, the live view).

Ray pickles an experiment's callbacks into its state (tuner.pkl) and, on Tuner.restore, drives the unpickled
copies: a resumed sweep would log through a stale MLflow client and draw on no terminal. A DriverCallback
pickles as a reference to its role instead; `bind` names the live instances of this process before a restore,
and the reference resolves to them. What a callback must carry across driver runs goes through Tune's own
Callback.get_state / set_state, which Ray saves with the experiment and hands back after the restore.
"""

from __future__ import annotations

from ray.tune import Callback

_BOUND: dict[str, Callback] = {}


class DriverCallback(Callback):
    """Subclasses set `role`, unique among the callbacks of one experiment."""

    role = "driver"

    def __reduce__(self):
        return (bound, (self.role,))


def bind(callbacks: list[Callback]) -> list[Callback]:
    """Make these the instances that restored experiments resolve their callbacks to; returns them."""
    _BOUND.clear()
    _BOUND.update({cb.role: cb for cb in callbacks if isinstance(cb, DriverCallback)})
    return callbacks


def bound(role: str) -> Callback:
    """The live callback of `role`, or one that does nothing (an experiment restored outside a sweep driver)."""
    return _BOUND.get(role) or Callback()
