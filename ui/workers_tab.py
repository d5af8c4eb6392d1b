"""The Workers tab (shown when the studio has more than one lane: several GPUs or --cluster):
each worker's machine, device, state and loaded checkpoint, refreshed every few seconds."""

from __future__ import annotations

import gradio as gr

from .context import UIContext

COLUMNS = ["Worker", "Machine", "Device", "State", "Loaded checkpoint", "Checkpoints", "Jobs done"]
REFRESH_SECONDS = 3


def rows(ctx: UIContext) -> list[list]:
    return [[worker["name"], worker["node"], worker["device"], worker["state"], worker["loaded"] or "(none)",
             worker["checkpoints"], "" if worker["jobs_done"] is None else worker["jobs_done"]]
            for worker in ctx.engine.workers()]


def summary(ctx: UIContext) -> str:
    workers = ctx.engine.workers()
    busy = sum(worker["state"] == "busy" for worker in workers)
    waiting = ctx.engine.queue.queued_count()
    if not workers:
        return ("**No worker has joined.** Jobs wait until one does: on a GPU machine run "
                "`./webui.sh --worker --cluster-address HOST:PORT` (docs/cluster.md).")
    return f"{len(workers)} workers, {busy} busy; {waiting} jobs waiting."


def build(ctx: UIContext) -> None:
    # Callables: read when a page opens, not when the page was built.
    status = gr.Markdown(lambda: summary(ctx), elem_id="workers_summary")
    table = gr.Dataframe(value=lambda: rows(ctx), headers=COLUMNS, interactive=False, elem_id="workers_table")
    refresh = gr.Button("Refresh", elem_id="workers_refresh", size="sm")
    timer = gr.Timer(REFRESH_SECONDS)
    for trigger in (refresh.click, timer.tick):
        trigger(lambda: (summary(ctx), rows(ctx)), outputs=[status, table], show_progress="hidden")
