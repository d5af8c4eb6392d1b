"""Progress bar, ETA and queue position as HTML, the polling loop tabs share, and the progress of
a model download."""

from __future__ import annotations

import html
import threading
from typing import Callable, Generator, Iterator

from engine.engine import Engine
from engine.jobs import Job

POLL_SECONDS = 0.3


def _seconds(value: float | None) -> str:
    if value is None:
        return "..."
    value = int(round(value))
    return f"{value // 60}m {value % 60:02d}s" if value >= 60 else f"{value}s"


def progress_html(engine: Engine, job: Job) -> str:
    position = engine.queue.position(job)
    if position is not None:
        place, total = position
        return (f"<div class='progress-text'>In queue: {place} of {total}"
                f"{'' if place > 1 else ' (waiting for the running job)'}</div>")
    snap = job.snapshot()
    percent = int(snap.fraction * 100)
    batch = f" · batch {snap.batch_index + 1}/{snap.batch_count}" if snap.batch_count > 1 else ""
    text = snap.textinfo or f"Step {snap.step}/{snap.total_steps}{batch}"
    return (
        f"<div class='progress-bar' role='progressbar' aria-valuenow='{percent}' "
        f"aria-valuemin='0' aria-valuemax='100'>"
        f"<div class='progress-fill' style='width:{percent}%'></div></div>"
        f"<div class='progress-text'>{html.escape(text)} · {percent}% · "
        f"ETA {_seconds(snap.eta)} · elapsed {_seconds(snap.elapsed)}</div>"
    )


def poll(engine: Engine, job: Job, update: Callable[[str, object], dict]) -> Iterator[dict]:
    """Yield `update(progress html, new preview or None)` until the job ends."""
    seen_preview = 0
    while not job.wait(POLL_SECONDS):
        preview = None
        if job.preview_id != seen_preview and job.preview is not None:
            seen_preview = job.preview_id
            preview = job.preview
        yield update(progress_html(engine, job), preview)


def download_bar_html(done: int, total: int | None) -> str:
    mb = done / 1e6
    if not total:
        return f"<div class='progress-text'>{mb:,.0f} MB</div>"
    percent = int(done * 100 / total)
    return (f"<div class='progress-bar'><div class='progress-fill' style='width:{percent}%'></div></div>"
            f"<div class='progress-text'>{mb:,.0f} / {total / 1e6:,.0f} MB · {percent}%</div>")


def download_steps(fetch: Callable[[Callable[[int, int | None], None]], object]) -> Generator[str, None, str | None]:
    """Run `fetch(progress)` in a thread, yielding a progress bar until it ends; returns the
    error's text, or None when the file is there."""
    state = {"done": 0, "total": None, "error": None}

    def work():
        try:
            fetch(lambda done, total: state.update(done=done, total=total))
        except Exception as error:  # shown to the user; the app keeps running
            state["error"] = getattr(error, "message", None) or str(error)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(POLL_SECONDS)
        yield download_bar_html(state["done"], state["total"])
    return state["error"]
