"""The machinery of the browser walk (tests/test_browser_walk.py): what the page saw, finding and
working every control under a root (Walk), pictures, strokes and small generations."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from engine.output.infotext import build as build_infotext
from engine.output.writer import png_bytes
from tests.support.bad_images import truncated_png
from tests.test_browser import set_number

_T0 = time.monotonic()
SETTLE_MS = 50  # after a change, for the events it fires to answer


@dataclass
class Seen:
    responses: list = field(default_factory=list)       # (status, method, url)
    console_errors: list = field(default_factory=list)  # console.error texts
    page_errors: list = field(default_factory=list)     # uncaught exceptions

    @property
    def server_errors(self) -> list:
        return [r for r in self.responses if r[0] >= 500]


# --- finding controls ----------------------------------------------------------------------------

# Tags (data-walk) the visible, not yet walked elements matching `selector` under `root` and
# returns their tags; `limit` stops after that many, `skip` leaves out what is inside it.
_TAG = """([root, selector, skip, limit, attr]) => {
    const base = document.querySelector(root);
    const found = [];
    if (!base) return found;
    for (const el of base.querySelectorAll(selector)) {
        if (found.length >= limit) break;
        if (el.dataset[attr] || (skip && el.closest(skip))) continue;
        const box = el.getBoundingClientRect();
        if (box.width === 0 || box.height === 0 || !el.checkVisibility({visibilityProperty: true})) continue;
        window.__walked = (window.__walked || 0) + 1;
        el.dataset[attr] = String(window.__walked);
        found.push(el.dataset[attr]);
    }
    return found;
}"""


class Walk:
    def __init__(self, page, root: str, skip: str = "", dropdown_picks: int = 2):
        self.page, self.root, self.skip = page, root, skip
        self.dropdown_picks = dropdown_picks
        self.counts: dict[str, int] = {}

    def _tag(self, selector: str, limit: int = 10_000, attr: str = "walk") -> list:
        tags = self.page.evaluate(_TAG, [self.root, selector, self.skip, limit, attr])
        data = re.sub(r"[A-Z]", lambda m: "-" + m.group(0).lower(), attr)
        return [self.page.locator(f"[data-{data}='{tag}']") for tag in tags]

    def _count(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if os.environ.get("WALK_TRACE"):
            print(f"{time.monotonic() - _T0:7.1f}s {self.root} {kind} {self.counts[kind]}", flush=True)

    def settle(self, ms: int = SETTLE_MS) -> None:
        self.page.wait_for_timeout(ms)

    # Everything: what is visible now, then each closed accordion or sub-tab in turn.
    def everything(self, max_rounds: int = 60) -> dict[str, int]:
        for _ in range(max_rounds):
            self.controls()
            opener = self._tag("button.label-wrap:not(.open), button[role=tab][aria-selected=false]",
                               limit=1, attr="walkOpen")
            if not opener:
                break
            opener[0].click()
            self._count("opened")
            self.settle(250)
        return self.counts

    def controls(self) -> None:
        for box in self._tag("input[role=combobox]"):
            self.dropdown(box)
        for box in self._tag("input[type=checkbox]"):
            self.checkbox(box)
        for group in self._tag("fieldset:has(input[type=radio])"):
            self.radios(group)
        for slider in self._tag("input[type=range]"):
            self.slider(slider)
        for box in self._tag("input[type=number]"):
            self.number(box)

    def dropdown(self, box) -> None:
        if box.is_disabled():
            return
        original = box.input_value()
        listbox = self.page.locator(f"#{box.get_attribute('aria-controls')}")
        box.click()
        options = listbox.get_by_role("option")
        try:
            options.first.wait_for(timeout=2000)
        except PlaywrightTimeout:
            self.page.keyboard.press("Escape")  # no choices (an empty list): nothing to pick
            self._count("dropdowns")
            return
        labels = [o.get_attribute("aria-label") for o in options.all()]
        picks = [label for label in dict.fromkeys([*labels[1:self.dropdown_picks], labels[-1]]) if label]
        block = box.locator("xpath=ancestor::div[contains(@class, 'block')][1]")
        if block.get_attribute("id", timeout=1000).endswith("_styles"):  # a multiselect
            self.choose(box, picks[0], multiselect=True)
            self.page.keyboard.press("Escape")
            block.locator(".token .token-remove").first.click()  # and take it out again
            self.settle()
        else:
            for label in picks + ([original] if original in labels else []):
                self.choose(box, label)
        self._count("dropdowns")

    def choose(self, box, label: str, multiselect: bool = False) -> None:
        listbox = self.page.locator(f"#{box.get_attribute('aria-controls')}")
        if box.get_attribute("aria-expanded") != "true":
            box.click()
        listbox.get_by_role("option", name=label, exact=True).click()
        if not multiselect:
            listbox.wait_for(state="detached")
        self.settle()

    def checkbox(self, box) -> None:
        if box.is_disabled():
            return
        box.click()
        self.settle()
        box.click()
        self.settle()
        self._count("checkboxes")

    def radios(self, group) -> None:
        labels = group.locator("label").all()
        original = next((label for label in labels if label.locator("input").is_checked()), None)
        for label in labels:
            if label.locator("input").is_disabled():
                return
            label.click()
            self.settle()
        if original is not None:
            original.click()
            self.settle()
        self._count("radio groups")

    def slider(self, slider) -> None:
        if slider.is_disabled():
            return
        box = slider.bounding_box()
        for fraction in (0.25, 0.7):
            self.page.mouse.click(box["x"] + box["width"] * fraction, box["y"] + box["height"] / 2)
            self.settle()
        reset = slider.locator("xpath=ancestor::div[contains(@class, 'block')][1]").locator(
            "[data-testid=reset-button]")
        if reset.count() and reset.first.is_visible():
            reset.first.click()
            self.settle()
        self._count("sliders")

    def number(self, box, values: tuple[str, ...] = ("", "-5", "99999")) -> None:
        """Valid (what it holds), empty, out of range both ways; then back."""
        if box.is_disabled() or not box.is_editable():
            return
        original = box.input_value()
        for value in values:
            box.fill(value)
            box.press("Tab")  # leaving the box commits (and clamps) what it holds
        box.fill(original)
        box.press("Tab")
        self.settle()
        self._count("number boxes")

    def buttons(self, pattern: str) -> int:
        """Clicks each visible, enabled button under the root whose id matches `pattern`."""
        clicked = 0
        ids = self.page.evaluate("(root) => [...document.querySelectorAll(`${root} button[id]`)].map(b => b.id)",
                                 self.root)
        for elem_id in ids:
            button = self.page.locator(f"#{elem_id}")
            if not re.search(pattern, elem_id) or not button.is_visible() or button.is_disabled():
                continue
            button.click()
            self.settle(250)
            clicked += 1
        self.counts["buttons"] = self.counts.get("buttons", 0) + clicked
        return clicked


# --- pictures ------------------------------------------------------------------------------------

def upload_image(page, field: str, files: dict, label: str) -> None:
    """A text file named .png, a truncated PNG, then a good picture into the gr.Image `field`."""
    upload = page.locator(f"#{field} input[type=file]")
    message = page.locator(f"#{field}_upload_message")
    upload.set_input_files(files["notes.png"])
    message.get_by_text(f"{label} is not an image").wait_for()
    upload.set_input_files(files["truncated.png"])
    message.get_by_text("damaged or truncated").wait_for()
    upload.set_input_files(files["picture.png"])
    page.locator(f"#{field} img").first.wait_for()
    message.get_by_text(label).wait_for(state="detached")


def upload_to_editor(page, field: str, files: dict) -> None:
    """A file that is not a picture, then a good one, into the gr.ImageEditor `field`."""
    editor = page.locator(f"#{field}")
    editor.locator("canvas").first.wait_for()
    page.wait_for_timeout(1500)  # the editor mounts its canvas before it takes an upload
    note = page.locator(f"#{field}_upload_message")
    editor.locator("input[type=file]").first.set_input_files(files["notes.png"])
    note.get_by_text("is not an image this app can read").wait_for()
    editor.locator("input[type=file]").first.set_input_files(files["picture.png"])
    note.get_by_text("is not an image").wait_for(state="detached")
    page.wait_for_timeout(2500)  # the editor draws it before it takes strokes


def stroke(page, field: str, colour_index: int | None = None) -> None:
    editor = page.locator(f"#{field}")
    editor.locator("button[aria-label='Brush']").click()
    # Mouse moves are in the window's coordinates: the canvas must be on screen, and drawn.
    editor.locator("canvas").first.scroll_into_view_if_needed()
    page.wait_for_function("(field) => [...document.querySelectorAll(`#${field} canvas`)]"
                           ".every(canvas => canvas.width > 0)", arg=field)
    page.wait_for_timeout(500)
    box = editor.locator("canvas").first.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x - 40, y - 10)
    page.mouse.down()
    for step in range(9):
        page.mouse.move(x - 40 + step * 10, y - 10 + (step % 2) * 20, steps=2)
    page.mouse.up()
    page.wait_for_timeout(300)


# --- generation ----------------------------------------------------------------------------------

def small_job(page, tab: str, prompt: str, steps: int = 3) -> None:
    page.locator(f"#{tab}_prompt textarea").fill(prompt)
    for name, value in (("steps", steps), ("width", 64), ("height", 64)):
        set_number(page, f"{tab}_{name}", value)


def generate(page, tab: str, prompt: str, steps: int = 3) -> str:
    """Generate a small picture; returns its infotext (the tab is not stuck)."""
    small_job(page, tab, prompt, steps)
    page.click(f"#{tab}_generate")
    page.wait_for_function(
        "([tab, text]) => document.querySelector(`#${tab}_infotext textarea`)?.value.includes(text)",
        arg=[tab, prompt], timeout=60_000)
    page.locator(f"#{tab}_gallery img").first.wait_for()
    return page.locator(f"#{tab}_infotext textarea").input_value()


def refused(page, tab: str, words: str) -> str:
    """Generate, and the tab says why it cannot (a message naming the problem)."""
    page.click(f"#{tab}_generate")
    message = page.locator(f"#{tab}_message")
    try:
        message.get_by_text(words).wait_for(timeout=30_000)
    except PlaywrightTimeout:
        raise AssertionError(f"expected {words!r} in {tab}'s message, it says {message.inner_text()!r}") from None
    return message.inner_text()


def interrupt_and_skip(page, tab: str) -> None:
    """Generate a longer job, then Skip and Interrupt it; the tab says so or finishes."""
    small_job(page, tab, f"interrupted in {tab}", steps=60)
    page.click(f"#{tab}_generate")
    page.wait_for_timeout(400)
    page.click(f"#{tab}_skip")
    page.click(f"#{tab}_interrupt")
    page.wait_for_function(
        "(tab) => document.querySelector(`#${tab}_message`)?.innerText.includes('Interrupted') || "
        "document.querySelector(`#${tab}_infotext textarea`)?.value.includes('interrupted in')",
        arg=tab, timeout=60_000)


def close_toast(page, words: str) -> None:
    """A message Gradio itself shows as a toast: it says what is wrong; then it is closed."""
    toast = page.locator(".toast-body").filter(has_text=words)
    toast.wait_for()
    toast.locator(".toast-close").click()
    toast.wait_for(state="detached")


def choose(page, elem_id: str, label) -> None:
    """Pick `label` (a string, exactly, or a compiled pattern) from a dropdown."""
    page.locator(f"#{elem_id} input").click()
    listbox = page.locator(f"#{elem_id} input").get_attribute("aria-controls")
    exact = {"exact": True} if isinstance(label, str) else {}
    page.locator(f"#{listbox}").get_by_role("option", name=label, **exact).click()
    page.wait_for_timeout(SETTLE_MS)


def cycle_preprocessors(page, unit: str) -> None:
    """Switch a unit's preprocessor through several values; each shows its own sliders."""
    for name in ("canny", "scribble", "none", "tile_resample", "depth_midas", "canny", "invert"):
        choose(page, f"{unit}_module", name)
        if name == "canny":
            page.locator(f"#{unit}_threshold_a").get_by_text("Low threshold").wait_for()
        if name == "none":
            page.locator(f"#{unit}_threshold_a").wait_for(state="hidden")


def preview_maps(page, unit: str, files: dict) -> None:
    """Preview the detected map: without a picture, then with one under several preprocessors
    (one whose weights are missing says so)."""
    note = page.locator(f"#{unit}_message")
    page.click(f"#{unit}_preview")
    note.get_by_text("No control image").wait_for()
    upload_to_editor(page, f"{unit}_image", files)
    for name in ("canny", "scribble", "shuffle"):
        choose(page, f"{unit}_module", name)
        page.click(f"#{unit}_preview")
        page.locator(f"#{unit}_detected img").wait_for()
    choose(page, f"{unit}_module", "depth_midas")
    page.click(f"#{unit}_preview")
    note.get_by_text("Cannot preview").wait_for()
    choose(page, f"{unit}_module", "inpaint")  # needs a mask: none painted
    page.click(f"#{unit}_preview")
    page.wait_for_timeout(800)
    choose(page, f"{unit}_module", "none")


def walk_files(folder: Path) -> dict[str, str]:
    """A good picture, one with generation parameters, a mask, and files that are not pictures."""
    noise = Image.effect_noise((64, 64), 60).convert("RGB")
    noise.save(folder / "picture.png")
    Image.effect_noise((48, 64), 30).convert("RGB").save(folder / "second.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(folder / "mask.png")
    text = build_infotext("a walked picture", "blurry", {"Steps": 3, "Sampler": "Euler a", "CFG scale": 5,
                                                          "Seed": 77, "Size": "64x64"})
    (folder / "with-parameters.png").write_bytes(png_bytes(noise, text))
    (folder / "notes.png").write_text("shopping list: milk, eggs\n" * 20)
    (folder / "notes.txt").write_text("not a picture either\n")
    (folder / "truncated.png").write_bytes(truncated_png())
    return {name: str(folder / f"{name}") for name in
            ("picture.png", "second.png", "mask.png", "with-parameters.png", "notes.png", "notes.txt",
             "truncated.png")}
