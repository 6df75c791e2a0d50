"""Screenshots of the dashboard and of a deployment page, saved to MCM_SCREENSHOT_DIR by every run."""

import struct

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.slow, pytest.mark.browser]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A blank 1400 x 1000 page compresses to a few kilobytes; a rendered console page is far larger.
MIN_PNG_BYTES = 20_000
DASHBOARD_IDS = (
    "#world-map",
    "#capacity-by-sku",
    "#capacity-by-provider",
    "#trouble-clusters",
    "#short-deployments",
    "#pending-failovers",
    "#latest-decisions",
    "#background-health",
)
DEPLOYMENT_IDS = (
    "#deployment-map",
    "#deployment-origins",
    "#deployment-routes",
    "#deployment-lock",
    "#deployment-explanation",
    "#deployment-scaling",
    "#deployment-audit",
)


def png_size(path) -> tuple[int, int]:
    """Return (width, height) from a PNG file's IHDR chunk; fail the test when the file is no PNG."""
    header = path.read_bytes()[:24]
    assert header[:8] == PNG_SIGNATURE, f"{path} is not a PNG file"
    assert header[12:16] == b"IHDR", f"{path} lacks the PNG IHDR chunk"
    return struct.unpack(">II", header[16:24])


def assert_screenshot(path) -> None:
    assert path.is_file(), f"{path} was not written"
    width, height = png_size(path)
    assert width >= 1400
    assert height >= 600
    assert path.stat().st_size >= MIN_PNG_BYTES, f"{path} has only {path.stat().st_size} bytes"


def test_screenshots_dashboard_and_deployment(login, ops, applied_plan, acme_chat, screenshot_dir):
    dashboard_png = screenshot_dir / "dashboard.png"
    deployment_png = screenshot_dir / "deployment.png"
    dashboard_png.unlink(missing_ok=True)
    deployment_png.unlink(missing_ok=True)

    page = login(ops)
    for element in DASHBOARD_IDS:
        expect(page.locator(element)).to_be_visible()
    page.screenshot(path=dashboard_png, full_page=True)

    # The deployment page is linked from the deployment's change page.
    page.goto(f"/admin/placements/deployment/{acme_chat.pk}/change/")
    page.click(f'a[href$="/admin/placements/deployment/{acme_chat.pk}/overview/"]')
    page.wait_for_url(f"**/admin/placements/deployment/{acme_chat.pk}/overview/")
    for element in DEPLOYMENT_IDS:
        expect(page.locator(element)).to_be_visible()
    expect(page.locator("#deployment-routes form")).to_be_visible()
    page.screenshot(path=deployment_png, full_page=True)

    assert_screenshot(dashboard_png)
    assert_screenshot(deployment_png)
