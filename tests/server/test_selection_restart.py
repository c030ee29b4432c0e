"""Selection-policy state per (app, user) is stored and comes back after a restart."""

from __future__ import annotations

from pathlib import Path

from tests.server.selection_helpers import make_app, make_label, predict, start_isolated, update

# -- persistence -----------------------------------------------------------------------


def test_policy_state_per_user_survives_a_restart(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    first = start_isolated(state_dir)
    try:
        first.conn.deploy_pickled("one", 1, "doubles", make_label(1))
        first.conn.deploy_pickled("zero", 1, "doubles", make_label(0))
        make_app(first, "persist", "exp4", {"eta": 0.5}, "one", "zero")
        for i in range(12):  # user 1 learns that "one" is right, user 2 that "zero" is
            predict(first, "persist", float(i), uid=1)
            update(first, "persist", float(i), 1, uid=1)
            predict(first, "persist", float(i), uid=2)
            update(first, "persist", float(i), 0, uid=2)
        before = {u: first.conn.get_selection_state("persist", u) for u in (0, 1, 2)}
        assert predict(first, "persist", 100.0, uid=1)["output"] == 1
        assert predict(first, "persist", 100.0, uid=2)["output"] == 0
    finally:
        first.bg.stop()
    second = start_isolated(state_dir)
    try:
        for u in (0, 1, 2):
            after = second.conn.get_selection_state("persist", u)
            assert after is not None and before[u] is not None
            assert after["state"] == before[u]["state"], u
            assert after["own_state"] == (u != 0)
        assert predict(second, "persist", 200.0, uid=1)["output"] == 1
        assert predict(second, "persist", 200.0, uid=2)["output"] == 0
        # A new policy starts over: nothing of Exp4's weights is carried across.
        second.conn.set_selection_policy("persist", "ucb1")
        state = second.conn.get_selection_state("persist", 1)
        assert state is not None and state["own_state"] is False and state["uids"] == []
    finally:
        second.bg.stop()
    third = start_isolated(state_dir)
    try:
        state = third.conn.get_selection_state("persist", 1)
        assert state is not None and state["policy"] == "ucb1" and state["uids"] == []
    finally:
        third.bg.stop()
