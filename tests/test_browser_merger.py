"""In the browser: the Checkpoint Merger tab merges two checkpoints, shows where the result went,
and the checkpoint list at the top offers it at once."""

from __future__ import annotations

import re
import shutil

import httpx


def test_the_merger_tab_merges_and_the_checkpoint_list_offers_the_result(page, demo_server, tiny_models):
    folder = demo_server.data_dir / "models" / "Stable-diffusion"
    inputs = [folder / "merge-a.safetensors", folder / "merge-b.safetensors"]
    result = folder / "browser-merged.safetensors"
    for path in inputs:
        shutil.copyfile(tiny_models.checkpoint("sd1"), path)
    try:
        page.goto(demo_server.url)
        page.get_by_role("tab", name="Checkpoint Merger").click()
        page.click("#modelmerger_refresh_checkpoint_list")
        for box, name in (("primary", "merge-a"), ("secondary", "merge-b")):
            dropdown = page.locator(f"#modelmerger_{box}_model_name")
            dropdown.locator("input").click()
            dropdown.get_by_role("option", name=re.compile(f"^{name}\\.safetensors")).click()
        page.locator("#modelmerger_custom_name textarea").fill("browser-merged")
        page.click("#modelmerger_merge")
        page.locator("#modelmerger_result").get_by_text("Checkpoint saved to").wait_for()
        assert "browser-merged.safetensors" in page.locator("#modelmerger_result").inner_text()
        assert result.is_file()
        # The models chosen stay chosen (their titles now carry the hashes the recipe read).
        for box, name in (("primary", "merge-a"), ("secondary", "merge-b")):
            page.wait_for_function("([box, name]) => document.querySelector(`#modelmerger_${box}_model_name input`)"
                                   "?.value.startsWith(`${name}.safetensors [`)", arg=[box, name])
        page.locator("#sd_checkpoint input").click()
        page.get_by_role("option", name=re.compile(r"^browser-merged\.safetensors")).wait_for()
    finally:
        for path in [*inputs, result]:
            path.unlink(missing_ok=True)
        httpx.post(demo_server.url + "/sdapi/v1/refresh-checkpoints", timeout=60)
