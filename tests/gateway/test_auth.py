"""The one login (gateway/auth.py): signed session cookies, token and PIN logins, throttling, and writes guarded by
``requires(scope)``, over a real aiohttp server on a free port."""
import logging
import time

import aiohttp
import pytest
from aiohttp import web

from contract.errors import ServiceError
from gateway.auth import COOKIE, SHIFT_S, Auth, Throttle, check, read_users, sign, user_line
from gateway.http import BODY, USER, HttpEndpoint, requires

KEY = b"k" * 32
T = 1_800_000_000.0


def test_a_session_is_signed_and_lasts_one_shift():
    cookie = sign("anna", {"operator"}, T, KEY)
    user = check(cookie, T + 60, KEY)
    assert (user.name, user.scopes) == ("anna", frozenset({"operator"}))
    assert check(cookie, T + SHIFT_S, KEY) is not None
    assert check(cookie, T + SHIFT_S + 1, KEY) is None  # the next shift logs in again
    assert check(cookie, T - 5, KEY) is None  # from the future
    assert check(cookie, T + 60, b"x" * 32) is None  # another key (a restart without a key file)
    body, mac = cookie.split(".")
    forged = sign("anna", {"operator", "presenter"}, T, b"guess").split(".")[0] + "." + mac
    assert check(forged, T + 60, KEY) is None
    assert check(body[:-1] + ("A" if body[-1] != "A" else "B") + "." + mac, T + 60, KEY) is None
    for junk in (None, "", "abc", "a.b.c", "!!!." + mac):
        assert check(junk, T, KEY) is None


def test_users_file_and_pins(tmp_path):
    path = tmp_path / "users"
    path.write_text("# name:scopes:hash\n" + user_line("anna", ["operator"], "4711") + "\n"
                    + user_line("piet", ["presenter", "operator"], "0000") + "\n")
    auth = Auth(users=read_users(str(path)))
    assert auth.by_pin("anna", "4711").scopes == {"operator"}
    assert auth.by_pin("anna", "4712") is None and auth.by_pin("nobody", "4711") is None
    assert auth.by_pin("anna", "") is None
    assert auth.by_token(auth.token).scopes == {"presenter", "operator"} and auth.by_token("x") is None
    path.write_text("anna:operator:4711\n")  # a PIN in plain text
    with pytest.raises(ServiceError, match=r"users file .*, line 1: expected name:scopes:hash"):
        read_users(str(path))
    path.write_text(user_line("anna", ["admin"], "1"))
    with pytest.raises(ServiceError, match=r"line 1: scopes must be some of presenter, operator"):
        read_users(str(path))


def test_failed_logins_are_throttled_per_client():
    t = Throttle(failures=3, window_s=60)
    for i in range(3):
        assert not t.blocked("a", T + i)
        t.failed("a", T + i)
    assert t.blocked("a", T + 10) and not t.blocked("b", T + 10)
    assert not t.blocked("a", T + 63)  # a minute later


@pytest.fixture
async def app_with_a_write(tmp_path):
    """The gateway's web app (no gateway needed for logins) with one guarded write added, and a PIN user."""
    users = tmp_path / "users"
    users.write_text(user_line("anna", ["operator"], "4711") + "\n")
    http = HttpEndpoint(None, port=0, auth=Auth(users=read_users(str(users))))
    done = []

    @requires("presenter")
    async def write(request):
        done.append((request[USER].name, request[BODY]))
        return web.json_response({"ok": True})

    http.app.router.add_post("/test/write", write)
    await http.start()
    yield http, done
    await http.stop()


async def test_login_and_guarded_writes(app_with_a_write, caplog):
    http, done = app_with_a_write
    caplog.set_level(logging.INFO, "fieldlab.gateway.http")
    origin = {"Origin": http.url}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        async with s.get(http.url + "/api/session") as r:
            assert await r.json() == {"user": None, "scopes": []}
        async with s.post(http.url + "/test/write", json={"fault": "breakdown"}, headers=origin) as r:
            assert r.status == 401 and "log in first" in (await r.json())["error"]
        # the link printed in the terminal: a cookie, then on to the presenter page
        async with s.get(http.login_url, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/presenter"
            cookie = r.headers["Set-Cookie"]
        assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert f"Max-Age={SHIFT_S}" in cookie
        async with s.get(http.url + "/api/session") as r:
            assert await r.json() == {"user": "presenter", "scopes": ["operator", "presenter"]}
        async with s.post(http.url + "/test/write", json={"fault": "breakdown"}) as r:  # no Origin
            assert r.status == 403 and "Origin" in (await r.json())["error"]
        async with s.post(http.url + "/test/write", json={}, headers={"Origin": "http://evil.example"}) as r:
            assert r.status == 403
        async with s.post(http.url + "/test/write", data="fault=breakdown", headers=origin) as r:
            assert r.status == 415
        async with s.post(http.url + "/test/write", data=b"[1]", headers={**origin, "Content-Type":
                                                                          "application/json"}) as r:
            assert r.status == 400 and (await r.json())["error"] == "the request body must be a JSON object"
        assert done == []
        async with s.post(http.url + "/test/write", json={"fault": "breakdown"}, headers=origin) as r:
            assert r.status == 200
        assert done == [("presenter", {"fault": "breakdown"})]
        assert any("write user=presenter scope=presenter path=/test/write" in m for m in caplog.messages)
        async with s.get(http.url + "/test/write") as r:  # writes are POST only
            assert r.status == 405 and r.headers["Allow"] == "POST" and "use POST" in (await r.json())["error"]
        async with s.post(http.url + "/logout", json={}, headers=origin) as r:
            assert r.status == 200
        async with s.post(http.url + "/test/write", json={"fault": "breakdown"}, headers=origin) as r:
            assert r.status == 401
        # a PIN user without the presenter role: logged in, and still refused
        async with s.post(http.url + "/login", json={"user": "anna", "pin": "4711"}, headers=origin) as r:
            assert r.status == 200 and await r.json() == {"user": "anna", "scopes": ["operator"]}
        async with s.post(http.url + "/test/write", json={"fault": "breakdown"}, headers=origin) as r:
            assert r.status == 403 and "needs the presenter role" in (await r.json())["error"]
    assert len(done) == 1


async def test_wrong_pins_for_one_name_from_many_addresses_are_throttled_too(app_with_a_write):
    """The per-address limit alone let many addresses guess one user's PIN (it also guards presenter mode)."""
    http, _ = app_with_a_write
    origin = {"Origin": http.url}

    async def attempt(address: str, pin: str, user: str = "anna") -> int:
        connector = aiohttp.TCPConnector(local_addr=(address, 0))
        async with aiohttp.ClientSession(connector=connector) as s:
            async with s.post(http.url + "/login", json={"user": user, "pin": pin}, headers=origin) as r:
                return r.status

    for i in range(20):  # 4 addresses x 5 tries: none of them hits its own limit
        assert await attempt(f"127.0.0.{10 + i // 5}", f"{i:04d}9") == 401
    assert await attempt("127.0.0.20", "4711") == 429  # even the right PIN waits, from a fresh address
    assert await attempt("127.0.0.21", "0000", user="piet") == 401  # other names go on


async def test_wrong_logins_are_refused_logged_and_throttled(app_with_a_write, caplog):
    http, _ = app_with_a_write
    origin = {"Origin": http.url}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        async with s.post(http.url + "/login", json={"user": "anna", "pin": "4711"}) as r:  # not from our page
            assert r.status == 403
        async with s.get(http.url + "/login?token=wrong", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/login?failed=1" and "Set-Cookie" not in r.headers
        for _ in range(4):
            async with s.post(http.url + "/login", json={"user": "anna", "pin": "0000"}, headers=origin) as r:
                assert r.status == 401 and "Set-Cookie" not in r.headers
        # five failures in a minute: even the right PIN (or token) waits
        async with s.post(http.url + "/login", json={"user": "anna", "pin": "4711"}, headers=origin) as r:
            assert r.status == 429
        async with s.get(http.login_url, allow_redirects=False) as r:
            assert r.status == 429
        async with s.get(http.url + "/api/session") as r:
            assert (await r.json())["user"] is None
        # a cookie made with another key (or altered) is nobody
        s.cookie_jar.update_cookies({COOKIE: sign("anna", {"presenter"}, time.time(), b"z" * 32)})
        async with s.get(http.url + "/api/session") as r:
            assert (await r.json())["user"] is None
    assert sum("login refused" in m for m in caplog.messages) == 5
