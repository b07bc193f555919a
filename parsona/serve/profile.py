"""The caller's own profile over HTTP: history, the persona's state, steering rules (read, replace, learn).

One ``APIRouter`` built for the app by :func:`profile_routes`; every route is scoped to the
authenticated caller (the ``caller`` dependency), so one user's history and rules are never read or
written through another's key.
"""

# No `from __future__ import annotations`: FastAPI must see the request bodies as classes.
import logging
import threading

from fastapi import APIRouter, Depends

from parsona.errors import ConfigError

from . import schemas as S
from .guard import ApiError

log = logging.getLogger("parsona.serve")
ERRORS = S.ERRORS
MAX_RULE_TEXTS = 1000         # the newest history items rules are mined from ...
MAX_RULE_TEXT_CHARS = 4000    # ... each cut to this many characters ...
MAX_RULE_CHARS_TOTAL = 1 << 20  # ... and at most this many in all: the work per request is bounded


def bounded_texts(items: list[dict]) -> list[str]:
    """The newest history texts, each cut, until the total budget is spent (the newest kept first)."""
    texts, total = [], 0
    for item in reversed(items):                # store.history is oldest first
        text = item["text"][:MAX_RULE_TEXT_CHARS]
        if total + len(text) > MAX_RULE_CHARS_TOTAL:
            break
        texts.append(text)
        total += len(text)
    return texts[::-1]


def profile_routes(store, host, caller, *, personas=None, rules_population=None) -> APIRouter:
    """The profile routes. ``personas`` embeds history as it arrives and reports the persona's state;
    ``rules_population`` (texts) enables learning rules (None: 501, users may still write their own)."""
    router = APIRouter()

    @router.put("/v1/profile/history", response_model=S.HistoryAppended, responses=ERRORS, tags=["profile"],
             summary="Append items to the caller's history")
    def append_history(body: S.HistoryAppend, user_id: str = Depends(caller)):
        items = [i.model_dump(exclude_none=True) for i in body.items]
        ids = store.add_history(user_id, items)
        if personas is not None:   # embedded as they arrive: a persona request later pools, never re-embeds
            try:
                personas.refresh(user_id)
            except Exception:      # the items are stored (a retry would duplicate them); the next use embeds them
                log.exception("embedding new history items failed; they are embedded when next needed")
        return S.HistoryAppended(item_ids=ids)

    @router.get("/v1/profile", response_model=S.Profile, responses=ERRORS, tags=["profile"],
             summary="The caller's own profile: history size and whether a persona is stored")
    def profile(user_id: str = Depends(caller)):
        items = store.usage(user_id)["history_items"]
        if personas is None:
            return S.Profile(history_items=items, persona=False, persona_items=0)
        p = personas.profile(user_id, refresh=False)
        return S.Profile(history_items=items, persona=p.persona is not None, persona_items=p.history_count,
                         updated_at=p.updated_at)

    @router.get("/v1/profile/rules", response_model=S.Rules, responses=ERRORS, tags=["profile"],
             summary="The caller's own steering rules")
    def get_rules(user_id: str = Depends(caller)):
        return S.Rules(**(store.get_rules(user_id) or {"rules": []}))

    @router.put("/v1/profile/rules", response_model=S.Rules, responses=ERRORS, tags=["profile"],
             summary="Replace the caller's steering rules with their own")
    def put_rules(body: S.RulesPut, user_id: str = Depends(caller)):
        store.put_rules(user_id, body.rules, source="user")
        return S.Rules(**store.get_rules(user_id))

    learning = threading.Semaphore(1)   # one mining at a time: it is CPU work in the request thread pool

    @router.post("/v1/profile/rules/learn", response_model=S.Rules, responses={**ERRORS, 501: {"model": S.ErrorResponse}},
              tags=["profile"], summary="Mine the caller's steering rules from their history (replaces the stored ones)")
    def learn_rules(user_id: str = Depends(caller)):
        from parsona.persona import SteeringRules

        if rules_population is None:
            raise ApiError(501, "not_implemented_error", "Learning rules is not enabled on this server (start it "
                           "with --rules-population FILE); write your own with PUT /v1/profile/rules.", None, "disabled")
        texts = bounded_texts(store.history(user_id, limit=MAX_RULE_TEXTS))
        if not learning.acquire(blocking=False):
            raise ApiError(429, "rate_limit_error", "Rules are being learned for another request; retry in a few "
                           "seconds.", None, "busy")
        try:
            mined = SteeringRules(population=rules_population, tokenizer=host.tokenizer).fit(texts)
        except ConfigError as exc:                  # too little history: say so about the caller's history
            raise ConfigError("history", "Add more history first (PUT /v1/profile/history).", problem=exc.problem) from None
        finally:
            learning.release()
        if not mined.rules_:                        # nothing stands out: keep what the user has
            raise ConfigError("history", "Add more, or more varied, history: nothing in it differs from the "
                              "population enough to make a rule.", problem="no rule found")
        store.put_rules(user_id, mined.rules_, source="mined")
        return S.Rules(**store.get_rules(user_id))

    return router
