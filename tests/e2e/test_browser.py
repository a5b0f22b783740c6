"""The job page in a real browser: log in, watch a job run live (websocket), no reload,
under the pages' Content-Security-Policy (nothing it blocks)."""
import pytest

from tests.e2e.conftest import E2E_PASSWORD, launch

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


def test_job_page_follows_a_running_job_live(embedded_stack, browser_page):
    page = browser_page
    page.goto(f"{embedded_stack.url}/login/")
    page.fill("input[name=username]", "e2e")
    page.fill("input[name=password]", E2E_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{embedded_stack.url}/")
    job_id = launch(embedded_stack, rounds=3, clients_required=3)
    page.goto(f"{embedded_stack.url}/jobs/{job_id}/")
    navigations, refused = [], []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    page.on("console", lambda message: refused.append(message.text) if "Content Security Policy" in message.text
            else None)
    # a selector, not wait_for_function: that evaluates a string in the page, which the CSP refuses
    page.wait_for_selector("#job-status:text-is('succeeded')", timeout=120_000)
    assert navigations == []  # the status arrived over the websocket, not by reloading
    assert refused == []
    for n in (1, 2, 3):
        assert page.locator(f"#round-{n}-train [data-role=status]").inner_text() == "closed"
        # the evaluation of round n's model (from round n + 1's nodes; the last in its own round)
        assert "accuracy=" in page.locator(f"#round-{n}-train [data-role=evaluation]").inner_text()
    assert "accuracy=" in page.locator("#round-3-evaluate [data-role=metrics]").inner_text()
    assert "round 3 (evaluate) closed" in page.locator("#events").inner_text()


def test_another_users_job_page_is_404(embedded_stack, browser_page):
    job_id = launch(embedded_stack, rounds=1)
    embedded_stack.manage("api_token", "intruder", "--create", "--password", "Intruder-pass-1")
    page = browser_page
    page.goto(f"{embedded_stack.url}/login/")
    page.fill("input[name=username]", "intruder")
    page.fill("input[name=password]", "Intruder-pass-1")
    page.click("button[type=submit]")
    page.wait_for_url(f"{embedded_stack.url}/")
    response = page.goto(f"{embedded_stack.url}/jobs/{job_id}/")
    assert response.status == 404
    embedded_stack.wait_job(job_id, timeout=120)
