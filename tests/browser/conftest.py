"""Browser tests: Playwright's sync API drives Debian's chromium against pytest-django's live server.

Every test here is skipped when /usr/bin/chromium is missing (``.ci/run`` installs it where apt-get
is available). Users log in through the admin's login form. Screenshots go to ``MCM_SCREENSHOT_DIR``,
by default ``var/screenshots``, and a relative path counts from the repository root. A failing test
saves a screenshot of its page there as ``failed-<test name>.png``, which its next passing run deletes.
"""

import os
import re
from pathlib import Path

import pytest
from django.conf import settings as django_settings

CHROMIUM = Path("/usr/bin/chromium")
# Milliseconds a browser step waits for an element or a page load before the test fails.
STEP_TIMEOUT_MS = 5_000
PASSWORD = "browser-test-password"


def pytest_collection_modifyitems(config, items):
    """Skip every test in this folder when chromium is missing, before any fixture (the test database) is set up."""
    if CHROMIUM.exists():
        return
    skip = pytest.mark.skip(reason=f"{CHROMIUM} is missing: install Debian's chromium package to run the browser tests")
    folder = Path(__file__).parent
    for item in items:
        if folder in item.path.parents:
            item.add_marker(skip)


@pytest.fixture(scope="package", autouse=True)
def browser():
    """Start Playwright and chromium once for the tests of this folder."""
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an asyncio event loop running in this thread from start() to stop(),
    # and Django rejects every ORM call from a thread with a running loop (SynchronousOnlyOperation),
    # the fixtures' and pytest-django's database flush included. Package scope stops the loop and
    # restores the variable before any test outside this folder runs in the same process.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()
    finally:
        playwright.stop()
        if previous is None:
            del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture(autouse=True)
def plain_http_cookies(settings):
    """Send the session and CSRF cookies over the live server's plain HTTP, and hash passwords fast.

    The suite runs with DEBUG=0, so both cookies default to Secure (MCM_HTTPS). The live server runs
    in a thread of this process and reads these settings on every request.
    """
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def replans(monkeypatch):
    """Record re-plans that admin actions request, in place of sending them to the Celery broker."""
    from tasks.tasks import plan_placements

    requested = []
    monkeypatch.setattr(plan_placements, "delay", lambda *args, **kwargs: requested.append(kwargs))
    return requested


@pytest.fixture(scope="session")
def screenshot_dir() -> Path:
    path = Path(os.environ.get("MCM_SCREENSHOT_DIR") or "var/screenshots")
    if not path.is_absolute():
        path = Path(django_settings.BASE_DIR) / path
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so that the ``page`` fixture can check whether the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def page(request, browser, live_server, screenshot_dir):
    """A page in a fresh browser context (no cookies), with relative URLs resolved against the live server."""
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(STEP_TIMEOUT_MS)
    tab = context.new_page()
    yield tab
    report = getattr(request.node, "report_call", None)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)
    failure_png = screenshot_dir / f"failed-{name}.png"
    if report is not None and report.failed:
        tab.screenshot(path=failure_png, full_page=True)
    else:
        failure_png.unlink(missing_ok=True)
    context.close()


@pytest.fixture
def login(page):
    """Return a function that logs a user in through the admin's login form and leaves the page on /admin/."""

    def log_in(user):
        user.set_password(PASSWORD)
        user.save(update_fields=["password"])
        page.goto("/admin/login/?next=/admin/")
        page.fill("#id_username", user.username)
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_url("**/admin/")
        user_tools = page.text_content("#user-tools") or ""
        assert user.username in user_tools, f"login as {user.username} failed: the admin shows {user_tools!r}"
        return page

    return log_in
