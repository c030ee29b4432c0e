"""Which batch-size controller a model version runs, from its configuration.

A model record's ``controller`` is ``"aimd"``, ``"quantile"``, ``"fixed"`` or
None; None keeps Clipper's reading of ``batch_size`` (> 0 pins the size, else
AIMD).  With an adaptive mode a ``batch_size`` > 0 is the largest batch it may
choose.
"""

from __future__ import annotations

from clipper_core.errors import BadInput
from clipper_core.structures import SloController

__all__ = ["AIMD_TOLERANCE", "CONTROLLER_MODES", "batch_controller", "controller_mode", "teach"]

CONTROLLER_MODES = ("aimd", "quantile", "fixed")

#: AIMD's hold band (Clipper's 10%): latencies above (1 - this) x SLO are news.
AIMD_TOLERANCE = 0.1


def controller_mode(controller: str | None, batch_size: int) -> str:
    """The mode that runs: ``controller``, or the one ``batch_size`` implies."""
    if controller is None:
        return "fixed" if batch_size > 0 else "aimd"
    if controller not in CONTROLLER_MODES:
        raise BadInput(f"unknown batch-size controller {controller!r}")
    if controller == "fixed" and batch_size <= 0:
        raise BadInput("controller 'fixed' needs a batch_size > 0")
    return controller


def batch_controller(
    controller: str | None, batch_size: int, max_batch_size: int, slo: float
) -> SloController:
    """A new :class:`SloController` for a model version.

    Args:
        controller: ``"aimd"``, ``"quantile"``, ``"fixed"`` or None (derived).
        batch_size: The record's batch size (-1: none given).
        max_batch_size: The server's cap when ``batch_size`` gives none.
        slo: The batch latency objective until an app sets one (seconds).
    """
    mode = controller_mode(controller, batch_size)
    if mode == "fixed":
        return SloController(
            slo, mode="fixed", max_batch_size=batch_size, fixed_batch_size=batch_size
        )
    cap = batch_size if batch_size > 0 else max_batch_size
    # The quantile mode keeps the extension's defaults: the p99 of a line fitted
    # over the last 512 batches, refitted every 16.
    return SloController(slo, mode=mode, max_batch_size=cap)


def teach(controller: SloController, n: int, latency: float) -> None:
    """Show ``controller`` a batch of ``n`` that took ``latency`` seconds."""
    # AIMD grows the limit after every fast batch, even one smaller than the
    # limit (Clipper's rule), and so does the quantile mode while its window
    # holds one size (no fit yet: light load's batches of one); either way the
    # limit walks up to max_batch_size, and the first burst then runs a batch
    # far too big for the SLO.  A batch below the limit that was fast says
    # nothing about the limit, so only full batches, and slow ones, teach.
    if (
        controller.mode != "fixed"
        and n < controller.batch_size
        and latency < controller.slo * (1.0 - AIMD_TOLERANCE)
    ):
        controller.record(n, latency)  # the quantile fit's point, no step
        return
    controller.observe(n, latency)
