"""An application's selection policy at work: ``AppSelector``.

The query path (``AppSelector.predict``) asks the policy which models to query,
submits each (input, model) to the model version's queue (cache first, like any
query), waits for all of them until the deadline with one timer, lets a cascade
escalate while time remains, and combines what arrived.  When the latency
objective passes first, the reply combines the outputs that arrived, names the
models that are missing and scales the confidence by the share that answered;
only when none arrived is the app's default output returned.

Feedback (``AppSelector.update``) scores the outputs of the models chosen for that
input, found in the prediction cache (computed again only when not cached),
refuses a label that cannot be compared with one of them (400, nothing learned;
:mod:`clipper_core.selection.losses`) or that no model gave an output for (503,
:mod:`clipper_core.selection.feedback`), runs the policy's ``observe`` and persists
the new state through a :class:`~clipper_core.selection.persister.StatePersister`;
the update is answered once its state is on disk.

State per (app, uid): a uid without a state of its own reads the global state
(uid 0) and gets its own copy at its first label.  A label teaches the state that
chose the models it scores (:mod:`clipper_core.selection.recent`).

``AppSelector`` is a :class:`~clipper_core.dataplane.QueryRouter`: the data plane
hands it a :class:`~clipper_core.dataplane.ModelLookup` and never names it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from clipper_core.dataplane.application import no_connected_model, unanswerable
from clipper_core.dataplane.futures import consume_exception, wait_until
from clipper_core.dataplane.routing import Application, ModelLookup, Outcome
from clipper_core.errors import (
    BadInput,
    ClipperError,
    DeadlineExceeded,
    NoLiveReplica,
    NoOutputToScore,
    NotFound,
)
from clipper_core.metrics import error_kind
from clipper_core.selection import SelectionPolicy, State, get_policy_class, validate_policy
from clipper_core.selection.base import Odds
from clipper_core.selection.feedback import gather_outputs
from clipper_core.selection.losses import incomparable
from clipper_core.selection.recent import RecentSelections
from clipper_core.selection.user_states import (
    GLOBAL_UID,
    MAX_USER_STATES,
    UserStates,
    json_copy,
)

if TYPE_CHECKING:
    from clipper_core.dataplane.model_version import ModelVersion
    from clipper_core.selection.persister import StatePersister

log = logging.getLogger("clipper_core.selection")

__all__ = [
    "FEEDBACK_TIMEOUT",
    "GLOBAL_UID",
    "AppSelector",
    "kv_namespace",
]

#: Seconds a model may take to answer an input whose output is needed for feedback
#: and was not in the cache.
FEEDBACK_TIMEOUT = 10.0


def kv_namespace(app_name: str) -> str:
    """The state store kv namespace of an app's policy states (key: the uid)."""
    return f"selection:{app_name}"


class _Query:
    """One input on its way through the policy: the models asked and their futures."""

    __slots__ = ("errors", "futures", "key", "mvs", "odds", "queried", "x")

    def __init__(self, x: Any, key: bytes) -> None:
        self.x = x
        self.key = key
        self.queried: list[str] = []
        self.futures: dict[str, asyncio.Future[Any]] = {}
        self.mvs: dict[str, ModelVersion] = {}
        self.errors: dict[str, BaseException] = {}
        self.odds: dict[str, float] = {}

    def outputs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.queried:
            fut = self.futures.get(name)
            if fut is not None and fut.done() and not fut.cancelled() and fut.exception() is None:
                out[name] = fut.result()
        return out

    def settled(self) -> bool:
        return all(f.done() for f in self.futures.values())

    def label(self, name: str) -> str:
        mv = self.mvs.get(name)
        return name if mv is None else mv.key


class AppSelector:
    """An application's policy, its per-user states, and its feedback bookkeeping.

    Args:
        app_name: The application.
        policy: The policy's registered name.
        config: The policy's options (validated here).
        states: Persisted states by uid.
        persister: Where new states are written; None keeps them in memory.
    """

    def __init__(
        self,
        app_name: str,
        policy: str,
        config: Mapping[str, Any] | None,
        states: dict[int, State] | None = None,
        persister: StatePersister | None = None,
        max_users: int = MAX_USER_STATES,
    ) -> None:
        self.app_name = app_name
        self.policy_name = policy
        self.policy_class = get_policy_class(policy)
        self.config = validate_policy(policy, config)
        self.rng = random.Random(self.config.get("seed"))
        self.persister = persister
        self.states = UserStates(states, max_users, self._forget_user)
        self._policy: SelectionPolicy | None = None
        self._bound_to: tuple[str, ...] | None = None
        self._recent = RecentSelections()
        self.updates = 0
        self.feedback_cache_hits = 0
        self.feedback_computed = 0
        self.feedback_rejected = 0

    @property
    def routes_queries(self) -> bool:
        """Whether queries go through the policy (``single`` uses the direct path)."""
        return self.policy_name != "single"

    def policy_for(self, models: Sequence[str]) -> SelectionPolicy:
        """The policy bound to ``models`` (rebuilt when the links change)."""
        bound = tuple(models)
        if self._policy is None or bound != self._bound_to:
            self._policy = self.policy_class(bound, self.config, self.rng)
            self._bound_to = bound
        return self._policy

    def state_for(self, uid: int, policy: SelectionPolicy) -> State:
        """The state that decides for ``uid``: its own, else the global one, else
        the policy's initial state."""
        state = self.states.get(uid)
        if state is None:
            state = self.states.get(GLOBAL_UID)
        if state is None:
            state = policy.initial_state()
        return state

    def _forget_user(self, uid: int) -> None:
        """A user pushed out of the bounded table: its stored state goes too."""
        if self.persister is not None:
            self.persister.delete(kv_namespace(self.app_name), str(uid))

    def reset(self) -> None:
        """Forget every learned state (the policy or its configuration changed)."""
        self.states.clear()
        self._recent.clear()
        self.updates = self.feedback_cache_hits = self.feedback_computed = 0
        self.feedback_rejected = 0

    # -- queries ------------------------------------------------------------------

    async def predict(
        self,
        lookup: ModelLookup,
        app: Application,
        inputs: Sequence[Any],
        keys: Sequence[bytes],
        deadline: float,
        *,
        version: str | None = None,
        uid: int = GLOBAL_UID,
        raise_errors: bool = True,
    ) -> list[Outcome]:
        """Answer each input with the models the policy selects, by ``deadline``."""
        started = time.monotonic()
        policy = self.policy_for(app.linked_models)
        state = self.state_for(uid, policy)
        queries = [_Query(x, key) for x, key in zip(inputs, keys, strict=True)]
        try:
            futures: list[asyncio.Future[Any]] = []
            for q in queries:
                chosen, q.odds = policy.draw(state, q.x)
                futures += self._submit(lookup, app, q, chosen, version, deadline)
            await wait_until(futures, deadline)
            # Cascades: further rounds while a stage asks for the next and time remains.
            while time.monotonic() < deadline:
                more: list[asyncio.Future[Any]] = []
                for q in queries:
                    if not q.settled():
                        continue
                    wanted = policy.escalate(state, q.x, q.outputs(), list(q.queried))
                    wanted = [m for m in wanted if m not in q.queried]
                    if wanted:
                        more += self._submit(lookup, app, q, wanted, version, deadline)
                if not more:
                    break
                await wait_until(more, deadline)
        except BaseException as exc:
            # A bad input, or the client went away: withdraw what is still queued.
            for q in queries:
                for f in q.futures.values():
                    if not f.cancel():
                        f.add_done_callback(consume_exception)
            if isinstance(exc, ClipperError):
                app.metrics.error(exc.kind, len(inputs), received=True)
            raise
        for q in queries:
            asked = tuple((n, mv.version) for n, mv in q.mvs.items())
            self._recent.remember(uid, q.key, asked, q.odds)
        outcomes: list[Outcome] = []
        late = errored = unavailable = 0
        try:
            for q in queries:
                outcome, unanswered = self._outcome(app, policy, state, q, raise_errors)
                outcomes.append(outcome)
                late += unanswered == "slo"
                errored += unanswered == "error"
                unavailable += unanswered == "no_model"
        except ClipperError as exc:
            app.metrics.error(exc.kind, len(inputs), received=True)
            raise
        elapsed = time.monotonic() - started
        app.metrics.answered(len(inputs), late, 0, errored, elapsed, app.slo, unavailable)
        for q in queries:  # each model asked: did it answer in time?
            answered = q.outputs() if elapsed <= app.slo else {}
            for name, mv in q.mvs.items():
                mv.metrics.judged(1, 1 if name in answered else 0)
        return outcomes

    def _submit(
        self,
        lookup: ModelLookup,
        app: Application,
        q: _Query,
        names: Sequence[str],
        version: str | None,
        deadline: float,
    ) -> list[asyncio.Future[Any]]:
        submitted: list[asyncio.Future[Any]] = []
        for name in names:
            if name in q.queried:
                continue
            q.queried.append(name)
            try:
                model = lookup.models.get(name)
                mv = None if model is None else model.version_for(version)
                if mv is None:
                    raise NotFound(f"model {name!r} has no deployed version")
                if mv.input_type != app.input_type:
                    raise BadInput(
                        f"model {mv.key} takes {mv.input_type!r} but app {app.name!r} sends"
                        f" {app.input_type!r}"
                    )
                q.mvs[name] = mv
                fut = mv.submit(q.x, q.key, deadline)
                if unanswerable(mv, fut):  # nothing to wait for: that model only
                    fut.cancel()
                    raise NoLiveReplica([mv.key])
            except BadInput:
                raise
            except ClipperError as exc:  # a full queue, a missing version: that model only
                q.errors[name] = exc
                continue
            q.futures[name] = fut
            submitted.append(fut)
        return submitted

    def _outcome(
        self,
        app: Application,
        policy: SelectionPolicy,
        state: State,
        q: _Query,
        raise_errors: bool,
    ) -> tuple[Outcome, str | None]:
        """The reply to one input, and why no model answered it ("slo", "error",
        "no_model")."""
        outputs: dict[str, Any] = {}
        missing: list[str] = []
        failures: list[tuple[str, BaseException]] = []
        timed_out = False
        for name in q.queried:
            fut = q.futures.get(name)
            if fut is None:
                missing.append(q.label(name))
                failures.append((name, q.errors[name]))
                continue
            if not fut.done():
                fut.add_done_callback(consume_exception)
                missing.append(q.label(name))
                timed_out = True
                continue
            exc = None if fut.cancelled() else fut.exception()
            if fut.cancelled() or exc is not None:
                missing.append(q.label(name))
                if isinstance(exc, DeadlineExceeded) or exc is None:
                    timed_out = True
                else:
                    failures.append((name, exc))
                continue
            outputs[name] = fut.result()
        if not outputs:
            # Models without a live replica answer nothing, at once: not an error.
            dead = [m for _, e in failures if isinstance(e, NoLiveReplica) for m in e.models]
            failures = [(n, e) for n, e in failures if not isinstance(e, NoLiveReplica)]
            if raise_errors and failures:
                raise failures[0][1]
            if not q.queried:
                why = f"the {self.policy_name} policy chose no model (check its options)"
            elif timed_out or not failures:
                why = f"no model answered within the latency objective ({app.slo * 1000.0:g} ms)"
            else:
                why = "; ".join(f"{q.label(n)}: {type(e).__name__}: {e}" for n, e in failures)
            only_dead = bool(dead) and not (timed_out or failures)
            if dead:
                refusal = no_connected_model(NoLiveReplica(dead))
                why = refusal if only_dead else f"{why}; {refusal}"
            out = app.default(why)
            out.models, out.missing, out.confidence = [], missing, 0.0
            out.unavailable = dead if only_dead else None
            if only_dead:
                return out, "no_model"  # an outage, not a slow model
            if timed_out or not failures:
                return out, "slo"
            app.metrics.error(error_kind(failures[0][1]))  # as the direct path counts it
            return out, "error"
        y, confidence = policy.combine(state, q.x, outputs)
        confidence = float(confidence) * len(outputs) / max(len(q.queried), 1)
        primary = policy.primary(state, outputs)
        outcome = Outcome(
            y,
            model=None if primary is None else q.label(primary),
            models=[q.label(n) for n in q.queried if n in outputs],
            confidence=confidence,
            missing=missing or None,
        )
        return outcome, None

    # -- feedback -----------------------------------------------------------------

    async def update(
        self,
        lookup: ModelLookup,
        app: Application,
        uid: int,
        x: Any,
        key: bytes,
        label: Any,
    ) -> dict[str, Any]:
        """Feed ``label`` for input ``x`` back to the policy state that chose its
        models; persist it.

        The outputs scored are those of the models chosen for this (uid, input) when
        it was predicted -- or, when it was predicted without a uid (Clipper's
        ``/predict`` has none), for (0, input), and then uid 0's state learns --
        else what ``uid``'s state would choose now.  They are read from the
        prediction cache, and computed only when not cached.  The reply's
        ``state_uid`` names the uid whose state learned.
        """
        policy = self.policy_for(app.linked_models)
        learner, targets, odds, unready = self._feedback_targets(lookup, app, policy, uid, x, key)
        found = await gather_outputs(targets, x, key, time.monotonic() + FEEDBACK_TIMEOUT)
        self.feedback_cache_hits += found.cache_hits
        self.feedback_computed += found.computed
        outputs = found.outputs
        scored = {name: outputs[name] for name, _ in targets if name in outputs}
        keys = {name: mv.key for name, mv in targets}
        if not scored:
            # Observing no loss is not learning nothing: with discount < 1 it would
            # still shrink the state toward its start, count an update and give the
            # uid a state of its own.
            self.feedback_rejected += 1
            raise NoOutputToScore(self.app_name, {**unready, **found.unanswered})
        why = incomparable(label, {keys[n]: y for n, y in scored.items()})
        if why is not None:
            # Scoring every model alike would teach the policy noise: say so.
            self.feedback_rejected += 1
            raise BadInput(f"{why}; nothing was learned (the loss rules: docs/selection.md)")
        # Read, observe and store with no await in between: concurrent updates of
        # one uid each see the other's result.
        state = self.state_for(learner, policy)
        new_state = json_copy(policy.observe_drawn(state, x, label, scored, odds))
        self.states[learner] = new_state
        self.updates += 1
        # Not when the app was deleted, or its policy replaced, meanwhile: this state
        # would overwrite what the new one stores.
        current = lookup.apps.get(app.name) is app and app.selector is self
        if self.persister is not None and current:
            await self.persister.put(
                kv_namespace(self.app_name),
                str(learner),
                {"policy": self.policy_name, "state": new_state},
            )
        models = [keys[n] for n in scored]
        return {"success": True, "uid": uid, "state_uid": learner, "models": models}

    def _feedback_targets(
        self,
        lookup: ModelLookup,
        app: Application,
        policy: SelectionPolicy,
        uid: int,
        x: Any,
        key: bytes,
    ) -> tuple[int, list[tuple[str, ModelVersion]], Odds, dict[str, str]]:
        """The uid whose state learns, the model versions its label scores, the
        chances they were drawn with, and why chosen models cannot be asked."""
        remembered = self._recent.find(uid, key)
        names: list[tuple[str, str | None]]
        odds: Odds
        if remembered is None:
            learner = uid
            chosen, odds = policy.draw(self.state_for(uid, policy), x)
            names = [(n, None) for n in chosen]
        else:
            learner, odds = remembered.uid, remembered.odds
            names = [(n, v) for n, v in remembered.models]
        targets: list[tuple[str, ModelVersion]] = []
        unready: dict[str, str] = {}
        for name, version in names:
            model = lookup.models.get(name)
            mv = None if model is None or version is None else model.versions.get(version)
            if mv is None and model is not None:
                mv = model.version_for(None)
            if mv is None:
                unready[name] = "not deployed"
            elif mv.input_type != app.input_type:
                unready[mv.key] = f"takes {mv.input_type}, not {app.input_type}"
            else:
                targets.append((name, mv))
        return learner, targets, odds, unready

    # -- reporting ----------------------------------------------------------------

    def describe(self, models: Sequence[str], uid: int | None = None) -> dict[str, Any]:
        """The policy, its options, the state that decides for ``uid`` and counters."""
        policy = self.policy_for(models)
        who = GLOBAL_UID if uid is None else uid
        state = self.state_for(who, policy)
        return {
            "app": self.app_name,
            "policy": self.policy_name,
            "policy_config": self.config,
            "uid": who,
            "own_state": who in self.states,
            "state": state,
            "summary": policy.describe(state),
            "uids": sorted(self.states),
            "updates": self.updates,
            "feedback_cache_hits": self.feedback_cache_hits,
            "feedback_computed": self.feedback_computed,
            "feedback_rejected": self.feedback_rejected,
        }
