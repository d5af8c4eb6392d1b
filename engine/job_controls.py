"""What a caller may do to the jobs on the queue, and see of them: a caller only ever acts on, or
sees the preview of, its own jobs. The Engine has these (it holds the queue and the models)."""

from __future__ import annotations

from engine.jobs import Job, JobQueue


class JobControls:
    queue: JobQueue
    models: object  # engine.models.pipelines.ModelManager

    def current_job(self) -> Job | None:
        return self.queue.current

    def generations_of(self, owner: str) -> list[Job]:
        """The owner's generations, running one first, then in the order they will run.
        (Checkpoint switches and upscales are not generations: Interrupt leaves them be.)"""
        return [job for job in self.queue.jobs_of(owner) if job.kind == "generate"]

    def job_to_watch(self, owner: str) -> Job | None:
        """The generation a progress display shows the caller: theirs (running, else the next of
        theirs to run), else whatever generation is running, so a client without a job of its
        own still sees the lane busy."""
        mine = self.generations_of(owner)
        if mine:
            return mine[0]
        return next((job for job in self.queue.running() if job.kind == "generate"), None)

    def interrupt(self, owner: str) -> int:
        """Stop the owner's generations: the running one stops early, waiting ones never start.
        Returns how many."""
        jobs = self.generations_of(owner)
        for job in jobs:
            job.interrupt()
            self.queue.cancel(job)
        return len(jobs)

    def skip(self, owner: str) -> int:
        """Skip the image the owner's running generations are making, if any of theirs runs."""
        running = [job for job in self.queue.running() if job.kind == "generate" and job.owner == owner]
        for job in running:
            job.skip()
        return len(running)

    def workers(self) -> list[dict]:
        """Every lane that makes pictures, for the UI's Workers table and the API."""
        listed = []
        for lane in self.queue.lanes:
            info = getattr(lane, "info", None)
            if info is not None:
                listed.append(info.listing())
            elif getattr(lane, "generates", True):
                current = self.models.current
                listed.append({"name": "studio", "node": "this machine", "device": self.models.device.label,
                               "state": "busy" if any(j.lane_name == lane.name for j in self.queue.running()) else "idle",
                               "loaded": current.info.title if current else None,
                               "checkpoints": len(self.models.registry.checkpoints), "jobs_done": None})
        return listed
