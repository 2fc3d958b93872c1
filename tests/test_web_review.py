"""The web review site: one-time sign-in, sessions, CSRF, and decisions that change the
database exactly as the Discord review buttons do (real SQLite, a real aiohttp server on
127.0.0.1, the real bot and cog against the fake Discord)."""

from __future__ import annotations

import asyncio
import json
import re
import tomllib
from html import unescape
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bot.discord_bot import ChannelBot
from bot.engine import Engine
from bot.routing import Router
from bot.training import TrainingBusy
from bot.web import MOUNT_PATH, ReviewSessions, create_review_app
from bot.web.sessions import COOKIE_NAME, RIGHTS_RECHECK_S
from storage import SyncStore

pytest_plugins = ("fake_discord",)

ADMIN_ID = 4242
PUBLIC_URL = "http://127.0.0.1:8080"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Site:
    """The review app mounted at /review on a real server; a browser-like client."""

    def __init__(self, config, db, sessions, **options):
        self.config, self.db, self.sessions = config, db, sessions
        root = web.Application()
        root.add_subapp(MOUNT_PATH, create_review_app(config=config, db=db, sessions=sessions,
                                                      event_poll_s=0.01, **options))
        self.client = TestClient(TestServer(root, host="127.0.0.1"))
        self.csrf = ""

    async def sign_in(self, admin_id: int = ADMIN_ID, name: str = "alice",
                      guild_id: int | None = None) -> str:
        link = self.sessions.mint_link(admin_id, name, guild_id)
        response = await self.client.post(_path(link), allow_redirects=False)
        assert response.status == 303, await response.text()
        page = await self.client.get(response.headers["Location"])
        assert page.status == 200
        self.csrf = _csrf(await page.text())
        return self.csrf

    async def act(self, path: str, data: dict | None = None, *, csrf: str | None = None,
                  status: int = 200) -> dict:
        """A state-changing request as the page's script sends it; returns its JSON."""
        body = {"csrf_token": self.csrf if csrf is None else csrf, **(data or {})}
        response = await self.client.post(MOUNT_PATH + path, data=body,
                                          headers={"Accept": "application/json"})
        assert response.status == status, await response.text()
        return await response.json()

    async def page(self, path: str, status: int = 200) -> str:
        response = await self.client.get(MOUNT_PATH + path)
        assert response.status == status, await response.text()
        return await response.text()


def _path(link: str) -> str:
    assert link.startswith(PUBLIC_URL + MOUNT_PATH + "/signin/")
    return link[len(PUBLIC_URL):]


def _csrf(html: str) -> str:
    return re.search(r'<meta name="csrf-token" content="([^"]+)">', html).group(1)


def _listed_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<article class="pair[^"]*" id="pair-\d+" data-id="(\d+)"',
                                       html)]


@pytest.fixture
async def site(db, make_config):
    """Start a site (signed out) over the test database; closed after the test."""
    started: list[Site] = []

    async def start(*, clock=None, public_url: str = PUBLIC_URL, config_text: str = "",
                    **options) -> Site:
        sessions = ReviewSessions(public_url=public_url, link_ttl_s=300, session_ttl_s=3600,
                                  clock=clock or FakeClock())
        result = Site(make_config(config_text), db, sessions, **options)
        await result.client.start_server()
        started.append(result)
        return result

    yield start
    for running in started:
        await running.client.close()


async def add_pairs(db, adapter: str, scores: list[int], *, channel_id: int = 10,
                    texts: list[str] | None = None, author_id: int = 99,
                    guild_id: int | None = None) -> list[int]:
    """Review candidates of `adapter` with these net scores (votes by users 1, 2, …),
    asked in `guild_id` (None: the direct scope, the console's link's)."""
    if await db.get_adapter(adapter) is None:
        await db.create_adapter(adapter, "tiny", scope=guild_id or 0)
    ids = []
    for n, score in enumerate(scores):
        text = texts[n] if texts else f"Question {n}?"
        turn = await db.record_turn(channel_id=channel_id, author_id=author_id, question=text,
                                    guild_id=guild_id,
                                    answer=f"The bot's answer {n}.", adapter_name=adapter,
                                    adapter_version=1, context=[{"role": "user",
                                                                 "content": "earlier"}])
        for user in range(score):
            await db.cast_vote(turn, 100 + user, 1, min_score=1)
        ids.append(turn)
    return ids


# --- sign-in -------------------------------------------------------------------------------

async def test_sign_in_link_works_once_and_expires(site):
    clock = FakeClock()
    s = await site(clock=clock)
    link = s.sessions.mint_link(ADMIN_ID, "alice")
    preview = await s.client.get(_path(link))  # a link preview opens it: nobody signs in
    assert preview.status == 200 and COOKIE_NAME not in preview.cookies

    first = await s.client.post(_path(link), allow_redirects=False)
    assert first.status == 303 and first.headers["Location"] == "/review/pending"
    cookie = first.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/review/" in cookie
    assert "Secure" not in cookie  # plain http on localhost
    assert (await s.client.get("/review/pending")).status == 200

    s.client.session.cookie_jar.clear()
    again = await s.client.post(_path(link), allow_redirects=False)
    assert again.status == 403 and "already used or has expired" in await again.text()

    late = s.sessions.mint_link(ADMIN_ID, "alice")
    clock.now += 301  # link_ttl_s is 300
    expired = await s.client.post(_path(late), allow_redirects=False)
    assert expired.status == 403
    assert (await s.client.get("/review/pending")).status == 401
    assert [a["action"] for a in await s.db.admin_actions()] == ["sign_in"]


async def test_session_expires_and_sign_out_ends_it(site):
    clock = FakeClock()
    s = await site(clock=clock)
    await s.sign_in()
    clock.now += 3599
    assert (await s.client.get("/review/pending")).status == 200
    clock.now += 2  # session_ttl_s is 3600
    refused = await s.client.get("/review/pending")
    assert refused.status == 401 and "/review web" in await refused.text()

    await s.sign_in()
    cookie = s.client.session.cookie_jar.filter_cookies(s.client.make_url("/review/"))
    session_id = cookie[COOKIE_NAME].value
    await s.act("/signout")
    assert s.sessions.get(session_id) is None
    assert (await s.client.get("/review/pending")).status == 401
    assert [a["action"] for a in await s.db.admin_actions()][:2] == ["sign_out", "sign_in"]


async def test_secure_cookie_behind_https(site):
    s = await site(public_url="https://bot.example.org")
    link = s.sessions.mint_link(ADMIN_ID, "alice")
    assert link.startswith("https://bot.example.org/review/signin/")
    response = await s.client.post(link[len("https://bot.example.org"):],
                                   allow_redirects=False)
    assert "Secure" in response.headers["Set-Cookie"]


@pytest.mark.parametrize(("url", "expected"), [
    ("bot.example.org", "is not an http:// or https:// address"),
    ("ftp://bot.example.org", "is not an http:// or https:// address"),
    ("https://bot.example.org/bot", "has a path"),
])
def test_bad_public_url_is_refused_with_the_fix(url, expected):
    with pytest.raises(ValueError, match=expected):
        ReviewSessions(public_url=url, link_ttl_s=60, session_ttl_s=60)


def test_web_settings_load(make_config):
    config = make_config('[web]\nenabled = true\npublic_url = "https://x.example"\n'
                         "link_ttl_s = 120\n")
    sessions = ReviewSessions.from_config(config.web)
    assert (config.web.enabled, sessions.link_ttl_s, sessions.secure_cookies) == (True, 120, True)


async def test_pages_need_a_session(site):
    s = await site()
    for path in ("/pending", "/approved", "/versions", "/runs", "/activity",
                 "/approved/export.jsonl", "/runs/1/events"):
        response = await s.client.get(MOUNT_PATH + path)
        assert response.status == 401, path
    json_refusal = await s.client.get("/review/pending", headers={"Accept": "application/json"})
    assert "not signed in" in (await json_refusal.json())["error"]


STATE_CHANGES = [
    ("/pairs/decide", {"ids": "1", "status": "approved"}),
    ("/pairs/1/edit", {"edited_answer": "changed"}),
    ("/pairs/approve-at-least", {"min_score": "1"}),
    ("/pairs/1/unapprove", {}),
    ("/versions/faq/2/serve", {}),
    ("/runs/start", {"adapter": "faq"}),
    ("/runs/cancel", {}),
    ("/signout", {}),
]


@pytest.mark.parametrize(("path", "data"), STATE_CHANGES, ids=[p for p, _ in STATE_CHANGES])
@pytest.mark.parametrize("token", ["", "not-the-token"], ids=["missing", "wrong"])
async def test_state_changes_without_the_csrf_token_are_refused(site, path, data, token):
    s = await site()
    await add_pairs(s.db, "faq", [2])
    await s.db.add_version("faq", path="faq/v1", status="serving")
    await s.db.add_version("faq", path="faq/v2")
    await s.sign_in()
    before = await s.db._all("SELECT * FROM review")
    refused = await s.client.post(MOUNT_PATH + path, data={**data, "csrf_token": token})
    assert refused.status == 403, path
    assert "security token" in await refused.text()
    header_only = await s.client.post(MOUNT_PATH + path, data=data,
                                      headers={"X-CSRF-Token": token} if token else {})
    assert header_only.status == 403
    assert [dict(r) for r in await s.db._all("SELECT * FROM review")] == \
        [dict(r) for r in before]
    assert (await s.db.serving_version("faq")).version == 1
    assert (await s.client.get("/review/pending")).status == 200  # still signed in


async def test_discord_that_cannot_tell_neither_signs_out_nor_lets_through(site):
    answers = []

    async def check_admin(guild_id: int, user_id: int) -> bool | None:
        return answers.pop(0)

    clock = FakeClock()
    s = await site(clock=clock, check_admin=check_admin)
    await s.sign_in(guild_id=77)
    clock.now += RIGHTS_RECHECK_S + 1
    answers[:] = [None, True]  # reconnecting: cannot tell; then it can again
    unsure = await s.client.get("/review/pending")
    assert unsure.status == 503 and "could not be confirmed" in await unsure.text()
    assert (await s.client.get("/review/pending")).status == 200  # still signed in
    assert answers == []


async def test_pages_escape_what_users_wrote(site):
    s = await site()
    await add_pairs(s.db, "faq", [2], texts=["<script>alert(1)</script>"])
    await s.sign_in()
    html = await s.page("/pending")
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    response = await s.client.get("/review/pending")
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["Referrer-Policy"] == "no-referrer"


# --- a non-admin cannot mint a link: the real cog against the fake Discord -------------------

@pytest.fixture
async def discord_bot(fake_discord, db, make_config):
    """The real bot (its cogs, storage; the engine is never started: no chat here)."""
    config = make_config(f"[discord]\ndev_guild_ids = [{fake_discord.world.guild.id}]\n")
    router = Router(config, db)
    bot = ChannelBot(config, db, Engine(config, router), router)
    now = [1_000_000.0]
    bot.review_sessions = ReviewSessions(public_url=PUBLIC_URL, link_ttl_s=300,
                                         session_ttl_s=3600, clock=lambda: now[0])
    await fake_discord.start_bot(bot)
    w = fake_discord.world
    yield SimpleNamespace(fake=fake_discord, bot=bot, db=db, config=config, admin=w.alice,
                          bob=w.bob, general=w.general, guild=w.guild, now=now)
    await fake_discord.stop_bots()


async def test_only_admins_get_a_sign_in_link(discord_bot):
    d = discord_bot
    crafted = await d.fake.invoke_command("review", subcommand="web", user_id=d.bob.id,
                                          channel_id=d.general.id, crafted=True)
    refusal = await crafted.wait_response()
    assert crafted.ephemeral
    assert "Manage Server permission or an admin role" in refusal.content
    assert "/review/signin/" not in refusal.content
    assert not d.bot.review_sessions._links  # nothing was minted

    minted = await d.fake.invoke_command("review", subcommand="web", user_id=d.admin.id,
                                         channel_id=d.general.id)
    answer = await minted.wait_response()
    assert minted.ephemeral and "works once, for 5 minutes" in answer.content
    link = re.search(r"<(http://\S+)>", answer.content).group(1)

    # the site the bot serves shares the sessions object with the cog
    root = web.Application()
    root.add_subapp(MOUNT_PATH, create_review_app(config=d.config, db=d.db,
                                                  sessions=d.bot.review_sessions,
                                                  check_admin=d.bot.still_admin))
    async with TestClient(TestServer(root, host="127.0.0.1")) as client:
        signed_in = await client.post(_path(link))
        assert signed_in.status == 200
        assert "alice" in await signed_in.text()
        d.now[0] += RIGHTS_RECHECK_S + 1  # Discord is asked again, and says admin
        assert (await client.get("/review/pending")).status == 200

        # her admin role is taken away: the session ends at the next check, not in 8 hours
        await d.fake.set_member_roles(d.guild.id, d.admin.id, [])
        assert (await client.get("/review/pending")).status == 200  # checked a moment ago
        d.now[0] += RIGHTS_RECHECK_S + 1
        ended = await client.get("/review/pending")
        assert ended.status == 403 and "admin rights in the server were removed" in \
            await ended.text()
        assert (await client.get("/review/pending")).status == 401  # signed out for good
    [action] = await d.db.admin_actions()
    assert (action["admin_id"], action["action"]) == (d.admin.id, "sign_in")


async def test_review_web_says_how_to_turn_the_page_on(discord_bot):
    d = discord_bot
    d.bot.review_sessions = None  # [web] enabled = false
    interaction = await d.fake.invoke_command("review", subcommand="web", user_id=d.admin.id,
                                              channel_id=d.general.id)
    text = (await interaction.wait_response()).content
    assert "web review page is off" in text and "[web]" in text and "enabled = " in text


# --- the same decisions through Discord and through the web ---------------------------------

SCORES = [3, 2, 2, 4, 2, 2, 2]  # approve, reject, edit, bulk ≥ 4, approve ×2 (selected), left


async def _decide_in_discord(d, ids: list[int]) -> None:
    fake, admin, channel = d.fake, d.admin.id, d.general.id
    bulk = await fake.invoke_command("review", {"min_score": 4, "adapter": "discord"},
                                     subcommand="bulk", user_id=admin, channel_id=channel)
    await bulk.wait_response()
    confirm = await fake.click_button(bulk.original_message.id, "review:bulk-confirm",
                                      user_id=admin)
    await confirm.wait_response()
    start = await fake.invoke_command("review", {"adapter": "discord"}, subcommand="start",
                                      user_id=admin, channel_id=channel)
    await start.wait_response()
    panel = start.original_message
    for turn_id, action in ((ids[0], "approve"), (ids[1], "reject"), (ids[2], "edit"),
                            (ids[4], "approve"), (ids[5], "approve")):
        click = await fake.click_button(panel.id, f"review:{action}:{turn_id}", user_id=admin)
        await click.wait_response()
        if action == "edit":
            submit = await fake.submit_modal(f"review:edit-modal:{turn_id}",
                                             {"review:edited-answer": "A better answer.\nTwo "
                                                                      "lines."},
                                             user_id=admin, channel_id=channel)
            await submit.wait_response()
    assert f"review:approve:{ids[6]}" in panel.custom_ids()  # the last pair waits


async def _decide_on_the_web(s: Site, ids: list[int]) -> None:
    result = await s.act("/pairs/approve-at-least", {"min_score": "4", "adapter": "web"})
    assert result["approved"] == 1
    await s.act("/pairs/decide", {"ids": str(ids[0]), "status": "approved"})
    await s.act("/pairs/decide", {"ids": str(ids[1]), "status": "rejected"})
    # a browser sends a textarea's line breaks as CRLF
    await s.act(f"/pairs/{ids[2]}/edit", {"edited_answer": "A better answer.\r\nTwo lines."})
    both = await s.act("/pairs/decide", {"ids": [str(ids[4]), str(ids[5])],
                                         "status": "approved"})
    assert both["done"] == [ids[4], ids[5]]
    assert both["counts"] == {"pending": 2, "approved": 10, "rejected": 2}


def _decision_rows(rows) -> list[tuple]:
    return [(r["status"], r["edited_answer"], r["reviewer_id"], r["reviewed_at"] is not None)
            for r in rows]


async def test_web_decisions_change_the_database_as_the_discord_buttons_do(discord_bot, site):
    d = discord_bot
    in_discord = await add_pairs(d.db, "discord", SCORES, guild_id=d.guild.id)
    on_the_web = await add_pairs(d.db, "web", SCORES, guild_id=d.guild.id)
    s = await site()
    await s.sign_in(admin_id=d.admin.id, guild_id=d.guild.id)
    await _decide_in_discord(d, in_discord)
    await _decide_on_the_web(s, on_the_web)

    rows = {turn: dict(r) for r in await d.db._all("SELECT * FROM review")
            for turn in [r["turn_id"]]}
    discord_rows = _decision_rows(rows[t] for t in in_discord)
    web_rows = _decision_rows(rows[t] for t in on_the_web)
    assert web_rows == discord_rows
    assert [r[0] for r in web_rows] == ["approved", "rejected", "approved", "approved",
                                        "approved", "approved", "pending"]
    assert web_rows[2][1] == "A better answer.\nTwo lines."
    assert {r[2] for r in web_rows[:6]} == {d.admin.id}
    discord_pairs = [(p.question, p.answer) for p in await d.db.approved_pairs("discord")]
    assert [(p.question, p.answer) for p in await d.db.approved_pairs("web")] == discord_pairs
    actions = [(a["admin_id"], a["action"]) for a in await d.db.admin_actions()]
    assert actions[:5] == [(d.admin.id, "approve"), (d.admin.id, "edit"),
                           (d.admin.id, "reject"), (d.admin.id, "approve"),
                           (d.admin.id, "approve_at_least")]


async def test_export_is_the_file_discord_attaches(discord_bot, site):
    d = discord_bot
    ids = await add_pairs(d.db, "faq", [2, 2, 3], texts=["Où ?", "Why?", "Naïve « quotes »"],
                          guild_id=d.guild.id)
    await d.db.decide_review(ids[0], "approved", reviewer_id=1, edited_answer="À Paris.")
    await d.db.decide_review(ids[2], "approved", reviewer_id=1)
    export = await d.fake.invoke_command("export", {"adapter": "faq"}, user_id=d.admin.id,
                                         channel_id=d.general.id)
    await export.wait_for_content(lambda c: "approved pairs" in c, timeout=10)
    message = export.followups[-1] if export.followups else export.original_message
    from_discord = message.attachment("faq-approved.jsonl").data

    s = await site()
    await s.sign_in(guild_id=d.guild.id)
    response = await s.client.get("/review/approved/export.jsonl?adapter=faq")
    assert response.status == 200
    assert response.headers["Content-Disposition"] == 'attachment; filename="faq-approved.jsonl"'
    assert await response.read() == from_discord
    assert [json.loads(line)["answer"] for line in from_discord.decode().splitlines()] == \
        ["À Paris.", "The bot's answer 2."]
    [action] = [a for a in await d.db.admin_actions() if a["action"] == "export"]
    assert (action["admin_id"], action["target"], action["detail"]) == \
        (ADMIN_ID, "faq", {"pairs": 2})
    unknown = await s.client.get("/review/approved/export.jsonl?adapter=nope")
    assert unknown.status == 404 and "unknown adapter 'nope'" in unescape(await unknown.text())


# --- the other actions ----------------------------------------------------------------------

async def test_decisions_on_pairs_already_decided_or_unknown_are_refused(site):
    s = await site()
    [turn] = await add_pairs(s.db, "faq", [2])
    await s.sign_in()
    await s.act("/pairs/decide", {"ids": str(turn), "status": "rejected"})
    again = await s.act("/pairs/decide", {"ids": str(turn), "status": "approved"}, status=409)
    assert "already rejected" in again["error"]
    unknown = await s.act("/pairs/decide", {"ids": "999", "status": "approved"}, status=404)
    assert "pair 999 is not a review candidate" in unknown["error"]
    bad = await s.act("/pairs/decide", {"ids": str(turn), "status": "maybe"}, status=400)
    assert "'approved' or 'rejected'" in bad["error"]
    empty = await s.act(f"/pairs/{turn}/edit", {"edited_answer": "  "}, status=400)
    assert "empty" in empty["error"]
    assert (await s.db.get_review(turn)).status == "rejected"


async def test_unapprove_returns_a_pair_to_pending_with_its_edit(site):
    s = await site()
    [turn] = await add_pairs(s.db, "faq", [2])
    await s.sign_in()
    await s.act(f"/pairs/{turn}/edit", {"edited_answer": "Fixed.",
                                        "also_asked": "Fix it?\r\n\r\nIs it fixed?"})
    approved = await s.page("/approved")
    assert "Fixed." in approved and "also asked as: Fix it? · Is it fixed?" in approved
    [pair] = await s.db.approved_pairs("faq")
    assert pair.also_asked == ["Fix it?", "Is it fixed?"]  # what the trainer reads
    result = await s.act(f"/pairs/{turn}/unapprove")
    assert result["counts"]["approved"] == 0
    item = await s.db.get_review(turn)
    assert (item.status, item.edited_answer, item.reviewer_id) == ("pending", "Fixed.", ADMIN_ID)
    assert item.also_asked == ["Fix it?", "Is it fixed?"]  # kept, like the edit
    assert await s.db.approved_pairs("faq") == []
    html = await s.page("/pending")
    assert f'data-id="{turn}"' in html and "<ins>Fixed.</ins>" in html  # the diff is shown
    assert "Fix it?\nIs it fixed?</textarea>" in html  # the form shows them for editing
    await s.act(f"/pairs/{turn}/unapprove", status=409)


async def test_plain_form_posts_come_back_to_the_page(site):
    s = await site()
    ids = await add_pairs(s.db, "faq", [2, 2])
    await s.sign_in()
    response = await s.client.post("/review/pairs/decide",
                                   data={"ids": str(ids[0]), "status": "approved",
                                         "csrf_token": s.csrf,
                                         "next": "/review/pending?sort=newest"},
                                   allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/review/pending?sort=newest"
    outside = await s.client.post("/review/pairs/decide",
                                  data={"ids": str(ids[1]), "status": "approved",
                                        "csrf_token": s.csrf, "next": "https://evil.example/"},
                                  allow_redirects=False)
    assert outside.headers["Location"] == "/review/pending"  # never an open redirect


async def test_pending_filters_and_sorts(site):
    s = await site()
    faq = await add_pairs(s.db, "faq", [2, 5, 3], channel_id=10,
                          texts=["How do I reset?", "Where is 50% off?", "Reset again?"])
    other = await add_pairs(s.db, "other", [4], channel_id=11, texts=["Something else?"])
    await s.sign_in()
    assert _listed_ids(await s.page("/pending")) == [faq[1], other[0], faq[2], faq[0]]
    assert _listed_ids(await s.page("/pending?sort=newest")) == [other[0], faq[2], faq[1],
                                                                 faq[0]]
    assert _listed_ids(await s.page("/pending?adapter=faq&sort=oldest")) == faq
    assert _listed_ids(await s.page("/pending?channel=11")) == other
    assert _listed_ids(await s.page("/pending?min_score=4")) == [faq[1], other[0]]
    assert _listed_ids(await s.page("/pending?q=reset")) == [faq[2], faq[0]]
    assert _listed_ids(await s.page("/pending?q=50%25")) == [faq[1]]  # % is literal
    assert _listed_ids(await s.page("/pending?adapter=__base__")) == []
    bad = await s.page("/pending?min_score=lots", status=400)
    assert "min_score must be a whole number" in bad
    assert "unknown sort" in await s.page("/pending?sort=random", status=400)


class RecordingPromote:
    """engine.promote's part that matters here: it is called, then the version serves."""

    def __init__(self, db):
        self.db, self.calls = db, []

    async def __call__(self, adapter: str, version: int, reason: str | None = None):
        self.calls.append((adapter, version, reason))
        await self.db.set_serving(adapter, version, reason=reason)


async def test_promote_and_roll_back_through_the_hot_reload(site, tmp_path):
    promote = RecordingPromote(None)
    s = await site(promote=promote)
    promote.db = s.db
    await s.db.create_adapter("faq", "tiny")
    for version in (1, 2):
        await s.db.add_version("faq", path=f"faq/v{version}",
                               status="serving" if version == 1 else "candidate")
    await s.sign_in()
    result = await s.act("/versions/faq/2/serve")
    assert (result["serving"], result["was"]) == (2, 1)
    await s.act("/versions/faq/1/serve")
    assert [(a, v) for a, v, _ in promote.calls] == [("faq", 2), ("faq", 1)]
    assert promote.calls[0][2] == f"promoted by alice ({ADMIN_ID}) on the web review page"
    assert promote.calls[1][2].startswith(f"rolled back by alice ({ADMIN_ID})")
    assert (await s.db.serving_version("faq")).version == 1
    refused = await s.act("/versions/faq/1/serve", status=409)
    assert "already serving" in refused["error"]
    await s.act("/versions/faq/7/serve", status=404)
    actions = [(a["action"], a["target"]) for a in await s.db.admin_actions()][:2]
    assert actions == [("rollback", "faq v1"), ("promote", "faq v2")]


async def test_without_hot_reload_the_version_is_served_from_storage(site):
    s = await site()
    await s.db.create_adapter("faq", "tiny")
    await s.db.add_version("faq", path="faq/v1")
    await s.sign_in()
    await s.act("/versions/faq/1/serve")
    serving = await s.db.serving_version("faq")
    assert serving.version == 1 and f"({ADMIN_ID})" in serving.reason


async def test_version_page_shows_the_gate_report_curve_and_data(site):
    s = await site()
    config = s.config
    [kept] = await add_pairs(s.db, "faq", [2], texts=["Kept?"])
    [forgotten] = await add_pairs(s.db, "faq", [2], texts=["Forgotten?"], author_id=77)
    for turn in (kept, forgotten):
        await s.db.decide_review(turn, "approved", reviewer_id=1)
    run = await s.db.create_run("faq")
    run_dir = config.data_dir / "runs" / "faq" / f"run-{run.id}"
    run_dir.mkdir(parents=True)
    await s.db.update_run(run.id, status="succeeded", log_path=str(run_dir / "train.log"))
    (run_dir / "events.jsonl").write_text(json.dumps(
        {"event": "gate", "version": 1, "promoted": True, "reason": "promoted: fine",
         "candidate_loss": 1.5, "reference_loss": 2.0}) + "\n", encoding="utf-8")
    version_dir = config.adapters_dir / "faq" / "v1"
    version_dir.mkdir(parents=True)
    (version_dir / "training_meta.json").write_text(json.dumps(
        {"method": "lora", "hyperparameters": {"epochs": 4, "learning_rate": 0.001},
         "data": {"train": 1, "held_out": 1}, "duration_s": 12.5, "device": "cpu"}))
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
    (version_dir / "loss_curve.png").write_bytes(png)
    record = await s.db.add_version("faq", path="faq/v1", status="serving", run_id=run.id,
                                    metrics={"held_out_loss": 1.5}, reason="promoted: fine")
    with SyncStore(s.db.path) as store:
        store.record_version_pairs(record.id, [(kept, "train"), (forgotten, "held_out")])
    await s.db.forget_user(77, min_score=1)  # one author asks to be forgotten
    await s.sign_in()

    versions = await s.page("/versions?adapter=faq")
    assert "promoted: fine" in versions and "candidate loss" in versions and "1.5" in versions
    assert "1 stored pairs trained on" in versions and "learning rate" in versions
    assert "/review/versions/faq/1/loss_curve.png" in versions
    detail = await s.page("/versions/faq/1")
    assert "deleted since (by /forget)" in detail and "held out" in detail
    curve = await s.client.get("/review/versions/faq/1/loss_curve.png")
    assert curve.status == 200 and await curve.read() == png
    assert curve.headers["Content-Type"] == "image/png"

    outside = await s.db.add_version("faq", path="../../../etc")  # never read
    assert "loss_curve.png" not in (await s.page("/versions/faq/2")).split("v2", 1)[1][:2000]
    missing = await s.client.get(f"/review/versions/faq/{outside.version}/loss_curve.png")
    assert missing.status == 404


# --- training runs -----------------------------------------------------------------------

async def _read_sse(response, until: str) -> list[tuple[str, dict]]:
    """(event type, data) of each server-sent event until one of type `until`."""
    seen, kind = [], "message"
    while True:
        line = (await asyncio.wait_for(response.content.readline(), 10)).decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            seen.append((kind, json.loads(line[6:])))
            if kind == until:
                return seen
            kind = "message"


async def running_run(s):
    """A run of adapter 'faq' that is going on, with an empty events file."""
    await s.db.create_adapter("faq", "tiny")
    run = await s.db.create_run("faq")
    run_dir = s.config.data_dir / "runs" / "faq" / f"run-{run.id}"
    run_dir.mkdir(parents=True)
    await s.db.update_run(run.id, status="running", log_path=str(run_dir / "train.log"))
    return run, run_dir / "events.jsonl"


async def test_run_progress_streams_as_server_sent_events(site):
    s = await site()
    run, events = await running_run(s)
    events.write_text('{"event": "start", "steps": 4}\n{"event": "step", "step": 1, '
                      '"total": 4, "loss": 2.5}\n', encoding="utf-8")
    await s.sign_in()
    response = await s.client.get(f"/review/runs/{run.id}/events")
    assert response.headers["Content-Type"] == "text/event-stream"
    first = [await _read_sse_one(response) for _ in range(2)]
    assert [e["event"] for e in first] == ["start", "step"]

    with events.open("a", encoding="utf-8") as out:  # the run goes on
        out.write('{"event": "step", "step": 4, "total": 4, "loss": 1.0}\n{"event": "do')
    assert (await _read_sse_one(response))["step"] == 4  # the half-written line waits
    with events.open("a", encoding="utf-8") as out:
        out.write('ne", "version": 1}\n')
    await s.db.update_run(run.id, status="succeeded", version=1)
    rest = await _read_sse(response, "end")
    assert rest == [("message", {"event": "done", "version": 1}),
                    ("end", {"status": "succeeded", "version": 1, "error": None})]

    resumed = await s.client.get(f"/review/runs/{run.id}/events",
                                 headers={"Last-Event-ID": "3"})  # a reconnecting browser
    assert await _read_sse(resumed, "end") == rest
    assert "Run 1" in await s.page(f"/runs?run={run.id}")


async def test_the_progress_stream_ends_with_the_session(site):
    """A stream stays open for as long as a run lasts: signing out in another tab (or the
    session expiring) ends it, rather than leaving a signed-out browser watching."""
    s = await site()
    run, events = await running_run(s)
    events.write_text('{"event": "start", "steps": 4}\n', encoding="utf-8")
    await s.sign_in()
    response = await s.client.get(f"/review/runs/{run.id}/events")
    assert (await _read_sse_one(response))["event"] == "start"
    await s.act("/signout")  # the same browser, from the page's other tab
    assert await _read_sse(response, "end") == [("end", {"status": "signed out"})]
    assert (await s.db.get_run(run.id)).status == "running"  # the run itself goes on


async def _read_sse_one(response) -> dict:
    return (await _read_sse(response, "message"))[-1][1]


class FakeTraining:
    """TrainingService's surface the site uses: start, cancel, active (the real service,
    which runs the trainer as a child process and follows it itself, has its own tests)."""

    def __init__(self, db):
        self.db, self.active, self.started, self.cancelled = db, None, [], 0

    async def start(self, adapter, *, trigger="manual", requested_by=None, channel_id=None):
        if self.active is not None:
            raise TrainingBusy("a training run is already going")
        await self.db.require_adapter(adapter)
        run = await self.db.create_run(adapter, trigger=trigger, requested_by=requested_by)
        self.started.append((adapter, trigger, requested_by))
        self.active = SimpleNamespace(run=run)
        return run

    async def cancel(self):
        self.cancelled += 1
        self.active = None  # (the real service: once its follower sees the child exit)
        return True


async def test_start_and_cancel_go_through_the_training_service(site):
    s = await site(training=None)
    training = FakeTraining(s.db)
    s2 = await site(training=training)
    await s.db.create_adapter("faq", "tiny")
    await s.sign_in()
    unavailable = await s.act("/runs/start", {"adapter": "faq"}, status=503)
    assert "training service" in unavailable["error"]

    await s2.sign_in()
    started = await s2.act("/runs/start", {"adapter": "faq"})
    assert training.started == [("faq", "manual", ADMIN_ID)]
    busy = await s2.act("/runs/start", {"adapter": "faq"}, status=409)
    assert "already going" in busy["error"]
    assert "Cancel the run" in await s2.page("/runs")
    await s2.act("/runs/cancel")
    assert training.cancelled == 1
    await asyncio.wait_for(_until(lambda: training.active is None), 5)
    assert "on its approved pairs now" in await s2.page("/runs")
    await s2.act("/runs/cancel", status=409)
    unknown = await s2.act("/runs/start", {"adapter": "nope"}, status=404)
    assert "unknown adapter 'nope'" in unknown["error"]
    actions = [(a["action"], a["target"]) for a in await s.db.admin_actions()
               if a["action"].startswith("train")]
    assert actions == [("train_cancel", f"run {started['run_id']}"),
                       ("train_start", f"run {started['run_id']}")]


async def _until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.01)


def test_templates_and_scripts_ship_as_package_data():
    import bot.web

    root = Path(bot.web.__file__).parent
    pyproject = tomllib.loads((root.parents[1] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["bot.web"]
    shipped = {path for pattern in patterns for path in root.glob(pattern)}
    needed = {*(root / "templates").iterdir(), *(root / "static").iterdir()}
    assert needed and needed <= shipped


# --- servers kept apart ---------------------------------------------------------------------

A_TEXT, B_TEXT = "Alpaca-Apricot", "Bison-Blueberry"


async def test_every_page_and_action_shows_and_touches_only_the_admins_own_server(site, db,
                                                                                  tmp_path):
    """An admin signed in from server B sees B's pairs, versions, runs and log, and every
    page or action naming server A's adapter, pair or run answers as if it did not exist
    (404), with none of A's text in the answer; nothing of A changes."""
    a_ids = await add_pairs(db, "alpha", [2, 2, 1], guild_id=1, channel_id=11,
                            texts=[f"{A_TEXT} {n}?" for n in range(3)])
    b_ids = await add_pairs(db, "bravo", [2, 1], guild_id=2, channel_id=22,
                            texts=[f"{B_TEXT} {n}?" for n in range(2)])
    await db.decide_review(a_ids[2], "approved", reviewer_id=1)
    for adapter in ("alpha", "bravo"):
        await db.add_version(adapter, path=f"{adapter}/v1", status="serving")
        await db.add_version(adapter, path=f"{adapter}/v2")
    a_run = await db.create_run("alpha")
    await db.record_admin_action(1, "approve", f"pair {a_ids[2]}", {"q": A_TEXT}, guild_id=1)
    s = await site()
    await s.sign_in(admin_id=22, guild_id=2)

    for page in ("/pending", "/approved", "/versions", "/runs", "/activity"):
        html = await s.page(page)
        assert A_TEXT not in html and "alpha" not in html, page
    assert B_TEXT in await s.page("/pending") and "bravo" in await s.page("/versions")
    exported = await s.client.get(MOUNT_PATH + "/approved/export.jsonl")
    assert A_TEXT not in await exported.text()

    before = await db._all("SELECT * FROM review ORDER BY turn_id")
    gets = ["/pending?adapter=alpha", "/versions?adapter=alpha", "/versions/alpha/1",
            "/versions/alpha/1/loss_curve.png", f"/runs/{a_run.id}/events",
            "/approved/export.jsonl?adapter=alpha"]
    for path in gets:
        response = await s.client.get(MOUNT_PATH + path)
        body = await response.text()
        assert response.status == 404, (path, body)
        assert A_TEXT not in body and str(a_run.id) + " " not in body, path
    posts = [("/pairs/decide", {"ids": str(a_ids[0]), "status": "approved"}),
             (f"/pairs/{a_ids[0]}/edit", {"edited_answer": "Mine now."}),
             (f"/pairs/{a_ids[2]}/unapprove", {}),
             ("/pairs/approve-at-least", {"min_score": "1", "adapter": "alpha"}),
             ("/versions/alpha/2/serve", {}), ("/runs/start", {"adapter": "alpha"})]
    for path, data in posts:
        answer = await s.act(path, data, status=404)
        assert A_TEXT not in json.dumps(answer), path
    assert (await s.act("/runs/cancel", status=409))["error"]
    assert await db._all("SELECT * FROM review ORDER BY turn_id") == before
    assert (await db.serving_version("alpha")).version == 1
    # B's own work goes on as before
    await s.act("/pairs/decide", {"ids": str(b_ids[0]), "status": "approved"})
    assert (await db.get_review(b_ids[0])).status == "approved"
