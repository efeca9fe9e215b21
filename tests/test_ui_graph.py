"""The viewer's Graph and Topics views in real headless Chromium against the real REST
service on loopback (fixtures from test_ui.py: the same browser, server and page checks,
so a script error, a 5xx or a request to another origin fails the test)."""

from __future__ import annotations

from datetime import UTC, datetime

from playwright.sync_api import Page, expect

from memosys.system import MemOS
from test_ui import _open, browser, page, pytestmark, site  # noqa: F401  (fixtures)

JAN = datetime(2023, 1, 10, tzinfo=UTC)
JUN = datetime(2023, 6, 1, tzinfo=UTC)


def _fill(mos: MemOS) -> None:
    mos.create_cube("conv")
    mos.add("conv", session="s1", valid_from=JAN, user="caroline", messages=[
        {"name": "Caroline", "content": "I live in Boston and I work at Sunrise Adoption Agency."},
        {"name": "Caroline", "content": "My sister Anna loves hiking with me."},
        {"name": "Caroline", "content": "Pottery class again, the clay wheel is hard."},
        {"name": "Caroline", "content": "My pottery bowl cracked in the kiln, the clay was wet."}])
    mos.add("conv", session="s2", valid_from=JUN, user="caroline", messages=[
        {"name": "Caroline", "content": "Big news: I moved to Denver last month."}])


def test_entity_page_facts_over_time_and_path(mos: MemOS, page: Page) -> None:  # noqa: F811
    _fill(mos)
    _open(page)
    page.get_by_role("tab", name="Graph").click()
    entities = page.get_by_test_id("entity-list")
    expect(entities).to_contain_text("Caroline")
    page.locator("#entity-type").select_option("place")
    page.locator("#entity-form button[type=submit]").click()
    expect(entities.locator("li")).to_have_count(2)  # Boston, Denver
    page.locator("#entity-type").select_option("")
    page.locator("#entity-form button[type=submit]").click()

    entities.locator("li[data-entity=Caroline]").click()
    entity = page.get_by_test_id("entity-page")
    expect(entity.locator("#entity-name")).to_have_text("Caroline")
    facts = page.get_by_test_id("fact-rows").locator("tr")
    boston = facts.filter(has_text="Boston")
    expect(boston).to_contain_text("lives_in")
    expect(boston).to_contain_text("2023-06-01")  # ended when she moved
    expect(boston).to_have_class("ended")
    expect(facts.filter(has_text="Denver")).to_contain_text("now")
    # facts as of a date: in March she lived in Boston, not yet in Denver
    page.locator("#entity-as-of").fill("2023-03-01")
    page.locator("#entity-as-of").dispatch_event("change")
    expect(facts.filter(has_text="Denver")).to_have_count(0)
    expect(facts.filter(has_text="Boston")).to_have_count(1)
    page.locator("#entity-as-of-clear").click()
    expect(facts.filter(has_text="Denver")).to_have_count(1)

    # neighbours lead to other entity pages; memories open in the memory panel
    page.get_by_test_id("neighbour-list").locator("button[data-entity=Anna]").click()
    expect(entity.locator("#entity-name")).to_have_text("Anna")
    memories = page.get_by_test_id("entity-memories").locator("li")
    expect(memories.filter(has_text="hiking")).to_have_count(1)
    memories.filter(has_text="hiking").click()
    expect(page.get_by_test_id("detail")).to_be_visible()
    expect(page.locator("#edit-text")).to_have_value(
        "Caroline: My sister Anna loves hiking with me.")

    page.locator("#path-from").fill("Boston")
    page.locator("#path-to").fill("Anna")
    page.locator("#path-find").click()
    expect(page.get_by_test_id("path-result")).to_have_text(
        "Boston—lives_in→Caroline—sister→Anna")


def test_topics_view_and_overview(mos: MemOS, page: Page) -> None:  # noqa: F811
    _fill(mos)
    [marked] = mos.add("conv", "A <b>bold</b> pottery note with clay", user="caroline")
    _open(page)
    page.get_by_role("tab", name="Topics").click()
    topics = page.get_by_test_id("topic-list").locator("li")
    expect(topics.first).to_be_visible()
    assert topics.count() == len(mos.topics("conv"))
    expect(page.get_by_test_id("overview-entities")).to_contain_text("Caroline")
    pottery = topics.filter(has_text="pottery").first
    pottery.click()
    topic = page.get_by_test_id("topic-page")
    expect(topic.locator("#topic-summary")).to_contain_text("memories about")
    listed = page.get_by_test_id("topic-memories").locator("li")
    expect(listed.filter(has_text="kiln")).to_have_count(1)
    # markup in a memory is shown as its characters, never as HTML
    expect(listed.filter(has_text="<b>bold</b>")).to_have_count(1)
    assert marked.id in {t for t in mos.topic(
        next(t.id for t in mos.topics("conv") if "pottery" in t.label)).memory_ids}
    # an overview of another user's memories: nothing of caroline's
    page.locator("#overview-user").fill("melanie")
    page.locator("#overview-user").dispatch_event("change")
    expect(page.get_by_test_id("topic-list")).to_contain_text("no topics yet")
    # from the overview's entities to the entity page
    page.locator("#overview-user").fill("")
    page.locator("#overview-user").dispatch_event("change")
    page.get_by_test_id("overview-entities").locator("button[data-entity=Caroline]").click()
    expect(page.get_by_test_id("entity-page").locator("#entity-name")).to_have_text("Caroline")
