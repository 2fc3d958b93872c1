"""The review page in a real headless Chromium (Debian's, driven by Playwright): sign in
with the one-time link, approve two pairs with the keyboard, edit one, see the counts
change. Screenshots of each page go under the test's temporary directory, and also to
$SCREENSHOT_DIR when it is set. Skipped, with the reason, where no browser is installed
(`make test` installs Chromium where it can)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.web import MOUNT_PATH, ReviewSessions, create_review_app
from storage import SyncStore

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ADMIN_ID = 4242

async_api = pytest.importorskip(
    "playwright.async_api", reason="Playwright is not installed: pip install -e '.[dev]'")
pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}: install it "
                       "with `apt-get install chromium` (make test does where it can)"),
    pytest.mark.timeout(180),
]

QUESTIONS = [
    ("How do I reset my password?", "Open Settings, then Account, then Reset password.", 5),
    ("Which port does the staging server use?", "Staging listens on port 8443.", 4),
    ("Who approves holiday requests?", "Your team lead approves them in the HR tool.", 3),
    ("Can I expense a second monitor?", "Yes, up to 250 euros with a receipt.", 2),
]


async def seed(db, config) -> list[int]:
    """An adapter with two versions (the first trained, with its report), a finished run,
    four pending pairs and one approved."""
    from trainer.plot import plot_loss_curve

    await db.create_adapter("support", "SmolLM2-135M-Instruct")
    await db.bind_channel(1001, "support")  # the console's scope, as the link below
    ids = []
    for question, answer, score in QUESTIONS + [("Where is the wiki?", "At wiki.example.", 2)]:
        turn = await db.record_turn(channel_id=1001, author_id=7, question=question,
                                    answer=answer, adapter_name="support", adapter_version=1,
                                    context=[{"role": "user", "content": "hi all"},
                                             {"role": "assistant", "content": "Hello!"}])
        for user in range(score):
            await db.cast_vote(turn, 100 + user, 1, min_score=2)
        ids.append(turn)
    await db.decide_review(ids[-1], "approved", reviewer_id=ADMIN_ID)
    run = await db.create_run("support", requested_by=ADMIN_ID)
    run_dir = config.data_dir / "runs" / "support" / f"run-{run.id}"
    run_dir.mkdir(parents=True)
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in [
        {"event": "start", "steps": 8, "examples": 9},
        *({"event": "step", "step": s, "total": 8, "loss": 2.4 / s} for s in range(1, 9)),
        {"event": "done", "version": 1},
        {"event": "gate", "version": 1, "promoted": True, "candidate_loss": 0.61,
         "reference_loss": 1.92, "reason": "promoted: held-out loss 0.61 vs base 1.92"}]))
    await db.update_run(run.id, status="succeeded", version=1,
                        log_path=str(run_dir / "train.log"))
    version_dir = config.adapters_dir / "support" / "v1"
    version_dir.mkdir(parents=True)
    history = [{"step": s, "loss": 2.4 / s ** 0.7} for s in range(1, 41)]
    plot_loss_curve(history, [{"step": 20, "loss": 0.9}, {"step": 40, "loss": 0.62}],
                    version_dir / "loss_curve.png", title="support v1")
    (version_dir / "training_meta.json").write_text(json.dumps(
        {"method": "lora", "duration_s": 41.2, "device": "cpu",
         "hyperparameters": {"epochs": 4, "learning_rate": 0.001, "lora_r": 16}}))
    version = await db.add_version("support", path="support/v1", status="serving",
                                   run_id=run.id, metrics={"held_out_loss": 0.61},
                                   reason="promoted: held-out loss 0.61 vs base 1.92")
    with SyncStore(db.path) as store:
        store.record_version_pairs(version.id, [(ids[-1], "train")])
    await db.add_version("support", path="support/v2", reason="refused: held-out loss 0.70 vs "
                         "serving v1 0.61 (+14.8%; limit +5%) on 1 pair(s)")
    return ids[:4]


class Shots:
    """Screenshots under the test's directory, copied to $SCREENSHOT_DIR when set."""

    def __init__(self, page, folder: Path):
        self.page, self.folder = page, folder
        self.extra = Path(os.environ["SCREENSHOT_DIR"]) if os.environ.get("SCREENSHOT_DIR") \
            else None
        folder.mkdir(parents=True, exist_ok=True)

    async def take(self, name: str, *, full_page: bool = True) -> Path:
        path = self.folder / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=full_page)
        if self.extra is not None:
            self.extra.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, self.extra / path.name)
        return path


async def test_sign_in_review_with_the_keyboard_and_edit(db, make_config, tmp_path):
    config = make_config()
    pending = await seed(db, config)
    sessions = ReviewSessions(public_url="http://127.0.0.1:8080", link_ttl_s=300,
                              session_ttl_s=3600)
    root = web.Application()
    root.add_subapp(MOUNT_PATH, create_review_app(config=config, db=db, sessions=sessions,
                                                  describe_channel={1001: "support"}.get,
                                                  event_poll_s=0.05))
    server = TestServer(root, host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    try:
        async with async_api.async_playwright() as driver:
            browser = await driver.chromium.launch(executable_path=str(CHROMIUM),
                                                   args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 860})
                page.set_default_timeout(15000)
                await review_in_the_browser(page, base, sessions, db, pending,
                                            Shots(page, tmp_path / "screenshots"))
            finally:
                await browser.close()
    finally:
        await server.close()


async def review_in_the_browser(page, base: str, sessions, db, pending: list[int],
                                shots: Shots) -> None:
    expect = async_api.expect
    link = sessions.mint_link(ADMIN_ID, "alice")
    await page.goto(base + link[len("http://127.0.0.1:8080"):])
    await shots.take("sign-in", full_page=False)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url("**/review/pending")
    pending_count = page.locator('nav [data-count="pending"]')
    approved_count = page.locator('nav [data-count="approved"]')
    await expect(pending_count).to_have_text("4")
    await expect(approved_count).to_have_text("1")
    await expect(page.locator("#pairs .pair.current")).to_have_attribute(
        "data-id", str(pending[0]))
    await shots.take("pending", full_page=False)

    await page.keyboard.press("a")  # the first pair (highest score)
    await expect(pending_count).to_have_text("3")
    await page.keyboard.press("j")  # skip one, approve the next
    await page.keyboard.press("a")
    await expect(pending_count).to_have_text("2")
    await expect(approved_count).to_have_text("3")
    await page.keyboard.press("k")  # back to the pair that was skipped
    await expect(page.locator("#pairs .pair.current")).to_have_attribute(
        "data-id", str(pending[1]))

    await page.keyboard.press("e")
    editor = page.locator(f"#pair-{pending[1]} textarea[name=edited_answer]")
    await expect(editor).to_be_focused()
    await editor.fill("Staging listens on port 9443 since the move.")
    await expect(page.locator(f"#pair-{pending[1]} .diff ins")).to_contain_text("9443")
    await expect(page.locator(f"#pair-{pending[1]} .diff del")).to_contain_text("8443.")
    also = page.get_by_role("textbox", name=f"other ways to ask pair {pending[1]}")
    await also.fill("Which port does staging use?\nWhere does staging listen?")
    await expect(page.locator(f"#pair-{pending[1]} .diff ins")).to_contain_text("9443")
    await shots.take("pending-edit", full_page=False)
    await page.keyboard.press("Control+Enter")  # from the second box: the same form
    await expect(pending_count).to_have_text("1")
    await expect(approved_count).to_have_text("4")
    await expect(page.locator("#pairs .pair")).to_have_count(1)
    await shots.take("pending-after")

    approved = {p.turn_id: p.answer for p in await db.approved_pairs("support")}
    assert approved[pending[1]] == "Staging listens on port 9443 since the move."
    assert (await db.get_review(pending[1])).also_asked == [
        "Which port does staging use?", "Where does staging listen?"]
    assert {pending[0], pending[2]} <= set(approved)
    assert {(await db.get_review(t)).reviewer_id for t in pending[:3]} == {ADMIN_ID}
    assert (await db.get_review(pending[3])).status == "pending"

    await page.get_by_role("link", name="Approved").click()
    await expect(page.locator("table.counts")).to_contain_text("support")
    await expect(page.locator(".pair ins")).to_contain_text("9443")
    await shots.take("approved")
    await page.get_by_role("link", name="Versions").click()
    await expect(page.locator(".version .badge.serving")).to_have_text("serving")
    await expect(page.locator("img[alt='loss curve of support v1']")).to_be_visible()
    await shots.take("versions")
    await page.get_by_role("link", name="Training").click()
    await expect(page.locator(".progress .now")).to_contain_text("run succeeded")
    await shots.take("training")
    await page.get_by_role("link", name="Activity").click()
    await expect(page.locator("table.activity")).to_contain_text("edit")
    await shots.take("activity")

    await page.set_viewport_size({"width": 390, "height": 844})  # a phone
    await page.get_by_role("link", name="Pending").click()
    await expect(page.locator("#pairs .pair")).to_have_count(1)
    await shots.take("pending-phone")
    for name in ("sign-in", "pending", "pending-edit", "pending-after", "approved", "versions",
                 "training", "activity", "pending-phone"):
        assert (shots.folder / f"{name}.png").stat().st_size > 1000, name
