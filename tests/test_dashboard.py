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
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)

    # without the token the node refuses
    resp = page.goto(n1.url + "/")
    assert resp is not None and resp.status == 401

    page.goto(f"{n1.url}/?token={TOKEN}")
    assert "token" not in page.url  # moved into a cookie, out of the address bar
    page.wait_for_function("() => document.querySelectorAll('#ring circle.server').length === 3")
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
    page.wait_for_function(f"() => Number(document.getElementById('done-total').textContent) > {before}")
    page.wait_for_function("() => document.querySelectorAll('#jobs tr.job').length > 0")
    assert int(page.inner_text("#submitted")) > 0

    # the job page of a recent job shows its state and node
    first = page.eval_on_selector("#jobs tr.job a", "a => a.getAttribute('href')")
    job = context.new_page()  # the same browser session: its cookie (a session value, not the token)
    assert all(TOKEN not in c["value"] for c in context.cookies())
    job.goto(n1.url + first)
    job.wait_for_function("() => document.body.dataset.done === '1'", timeout=30_000)
    assert job.inner_text("#state") in ("succeeded", "failed")
    assert job.inner_text("#where")
    assert job.inner_text("#kind") == "pickle" and job.inner_text("#name")  # kept in the result when finished
    job.close()

    # kill a node: it turns dead (suspect first, then removed from the ring and kept as dead)
    cluster.kill(n3)
    page.wait_for_function(
        f"() => (() => {{ const r = document.querySelector('#servers tr[data-id=\"{n3.node_id}\"]');"
        f" return r && r.dataset.status === 'dead'; }})()", timeout=60_000)
    dot = page.query_selector(f'#ring circle[data-id="{n3.node_id}"]')
    assert dot is not None and dot.get_attribute("data-status") == "dead"
    assert sorted(page.eval_on_selector_all(
        "#servers tr.server-row", "els => els.map(e => e.dataset.status)")) == ["alive", "alive", "dead"]
    page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)
    context.close()


def test_a_page_on_another_port_cannot_borrow_the_dashboard_cookie(cluster_factory, browser):
    """Cross-site WebSocket hijacking: a page on another local port (same site, other origin) opens the node's
    stream with the dashboard cookie and sends a submission; the node must refuse the foreign Origin."""
    import base64
    import http.server
    import threading
    import urllib.request
    import uuid

    import msgspec

    from harness.local import free_port
    from jobgrid.protocol import JobSpec, SubmitRequest

    cluster = cluster_factory(token=TOKEN, runners=1, replicas=1)
    n1 = cluster.up(1)[0]
    jid = f"hijack-{uuid.uuid4().hex[:8]}"
    enc = msgspec.msgpack.Encoder()
    body = enc.encode(SubmitRequest(jobs=[JobSpec(id=jid, kind="call", target="jobgrid.examples:noop")]))
    frame = base64.b64encode(enc.encode((1, "/jobs", None, body))).decode()
    page_html = f"""<html><body><script>
      const ws = new WebSocket("ws://{n1.host}:{n1.port}/stream");
      ws.binaryType = "arraybuffer";
      ws.onopen = () => {{ ws.send(Uint8Array.from(atob("{frame}"), c => c.charCodeAt(0))); document.title = "sent"; }};
      ws.onmessage = () => {{ document.title = "answered"; }};
      ws.onerror = () => {{ document.title = "refused"; }};
    </script></body></html>""".encode()

    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(page_html)

        def log_message(self, *a):
            pass

    evil = http.server.ThreadingHTTPServer((n1.host, free_port(n1.host)), Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        page = browser.new_page()
        page.goto(f"{n1.url}/?token={TOKEN}")  # the user's dashboard session: the cookie is set
        assert page.context.cookies()
        page.goto(f"http://{n1.host}:{evil.server_address[1]}/")
        page.wait_for_function("() => document.title === 'refused' || document.title === 'answered'", timeout=30_000)
        title = page.title()
        page.close()
    finally:
        evil.shutdown()
        evil.server_close()
    req = urllib.request.Request(f"{n1.url}/jobs/{jid}", headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            known = r.status == 200
    except urllib.error.HTTPError as e:
        known = e.code != 404
    assert title == "refused" and not known, (title, known)
