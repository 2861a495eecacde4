"""Errors the services raise again and again (a wrong password's 401 among them) must not keep
the requests that raised them alive: an exception instance raised twice keeps every earlier
traceback, with the frames' locals (the typed password, the request, the connection)."""
from __future__ import annotations

import gc

from msp_auth import http as auth_http

from auth_kit import Auth


def _reachable_locals(exc: BaseException) -> list[object]:
    found, seen = [], set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        tb = e.__traceback__
        while tb is not None:
            found.extend(tb.tb_frame.f_locals.values())
            tb = tb.tb_next
        todo += [e.__context__, e.__cause__]
    return found


async def test_wrong_passwords_are_not_kept_by_the_error_they_raise(auth: Auth) -> None:
    await auth.make_user("mae@example.org")
    typed = [f"Wrong-Guess-{n}-Pass!" for n in range(3)]
    for password in typed:
        assert (await auth.login("mae@example.org", password)).status == 401
        assert (await auth.login("nobody@example.org", password)).status == 401
    gc.collect()
    kept = repr(_reachable_locals(auth_http.INVALID_CREDENTIALS))
    assert not [p for p in typed if p in kept]
    assert auth_http.INVALID_CREDENTIALS.__traceback__ is None
