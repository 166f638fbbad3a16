"""The dashboard in a real headless Chromium against a live 3-node grid."""

from __future__ import annotations


import pytest

from jobgrid.client import Client
from jobgrid.examples import add, fail

pytestmark = pytest.mark.browser

TOKEN = "dashboard-test-token-0123456789"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    import os
    if not os.path.exists(CHROMIUM):
        pytest.skip("needs /usr/bin/chromium (apt-get install -y chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield b
        finally:
            b.close()



def test_dashboard_shows_ring_jobs_and_a_dead_node(cluster_factory, browser, artifacts):
    cluster = cluster_factory(token=TOKEN, runners=1)
    n1, n2, n3 = cluster.up(3)
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.set_default_timeout(30_000)

    # without the token the node refuses
    resp = page.goto(n1.url + "/")
    assert resp is not None and resp.status == 401

    page.goto(f"{n1.url}/?token={TOKEN}")
    assert "token" not in page.url  # moved into a cookie, out of the address bar
    page.wait_for_function("document.querySelectorAll('#ring circle.server').length === 3")
    ids = set(page.eval_on_selector_all("#ring circle.server", "els => els.map(e => e.dataset.id)"))
    assert ids == {n.node_id for n in (n1, n2, n3)}
    assert page.eval_on_selector_all("#servers tr.server-row", "els => els.map(e => e.dataset.status)") == \
        ["alive"] * 3

    before = int(page.inner_text("#done-total"))
    with Client([n1.url, n2.url, n3.url], token=TOKEN) as c:
        futs = [c.submit(add, i, i) for i in range(20)]
        bad = c.submit(fail, "boom for the dashboard")
        assert [f.result(60) for f in futs] == [2 * i for i in range(20)]
        with pytest.raises(Exception):
            bad.result(60)
    # counters move and recent jobs appear (n1 owns some of the jobs; its counters are what it shows)
    page.wait_for_function(f"Number(document.getElementById('done-total').textContent) > {before}")
    page.wait_for_function("document.querySelectorAll('#jobs tr.job').length > 0")
    assert int(page.inner_text("#submitted")) > 0

    # the job page of a recent job shows its state and node
    first = page.eval_on_selector("#jobs tr.job a", "a => a.getAttribute('href')")
    job = browser.new_page()
    job.context.add_cookies([{"name": "jobgrid_token", "value": TOKEN, "url": n1.url}])
    job.goto(n1.url + first)
    job.wait_for_function("document.body.dataset.done === '1'", timeout=30_000)
    assert job.inner_text("#state") in ("succeeded", "failed")
    assert job.inner_text("#where")
    assert job.inner_text("#kind") == "pickle" and job.inner_text("#name")  # kept in the result when finished
    job.close()

    # kill a node: it turns dead (suspect first, then removed from the ring and kept as dead)
    cluster.kill(n3)
    page.wait_for_function(
        f"(() => {{ const r = document.querySelector('#servers tr[data-id=\"{n3.node_id}\"]');"
        f" return r && r.dataset.status === 'dead'; }})()", timeout=60_000)
    dot = page.query_selector(f'#ring circle[data-id="{n3.node_id}"]')
    assert dot is not None and dot.get_attribute("data-status") == "dead"
    assert sorted(page.eval_on_selector_all(
        "#servers tr.server-row", "els => els.map(e => e.dataset.status)")) == ["alive", "alive", "dead"]
    page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)
    page.close()
