"""Signing in and out of the review site, and the admin log of the signed-in scope."""

from __future__ import annotations

from aiohttp import web

from .app import SESSION, SITE, nav_counts, render, scope_of_request, url, wants_json
from .sessions import COOKIE_NAME


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/", home, name="home")
    router.add_get("/signin/{token}", sign_in_form, name="sign_in_form")
    router.add_post("/signin/{token}", sign_in, name="sign_in")
    router.add_post("/signout", sign_out, name="sign_out")
    router.add_get("/activity", activity_page, name="activity")


async def home(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther(url(request, "pending"))


async def sign_in_form(request: web.Request) -> web.Response:
    """A page with one button: opening the link alone (a link preview) signs nobody in."""
    return render(request, "sign_in.html", token=request.match_info["token"])


async def sign_in(request: web.Request) -> web.Response:
    site = request.app[SITE]
    redeemed = site.sessions.redeem(request.match_info["token"])
    if redeemed is None:
        return render(request, "message.html", status=403, title="Link not valid",
                      message="This sign-in link was already used or has expired. Run "
                              "/review web in Discord for a new one.")
    session_id, session = redeemed
    request[SESSION] = session
    await site.record(request, "sign_in")
    response = web.HTTPSeeOther(url(request, "pending"))
    response.set_cookie(COOKIE_NAME, session_id, max_age=int(site.sessions.session_ttl_s),
                        path=url(request, "home"), httponly=True, samesite="Strict",
                        secure=site.sessions.secure_cookies)
    raise response


async def sign_out(request: web.Request) -> web.Response:
    site = request.app[SITE]
    await site.record(request, "sign_out")
    site.sessions.end(request.cookies.get(COOKIE_NAME))
    if wants_json(request):
        response = web.json_response({"signed_out": True})
    else:
        response = render(request, "message.html", title="Signed out",
                          message="You are signed out. Run /review web in Discord to sign in "
                                  "again.")
    response.del_cookie(COOKIE_NAME, path=url(request, "home"))
    return response


async def activity_page(request: web.Request) -> web.Response:
    actions = await request.app[SITE].db.admin_actions(limit=200,
                                                       scope=scope_of_request(request))
    return render(request, "activity.html", page="activity", nav=await nav_counts(request),
                  actions=actions)
