"""A test extension whose hook raises: it must be skipped, and the job must still work."""

from engine.extensions import Extension, Field


class Broken(Extension):
    name = "broken_hook"
    title = "Broken hook"
    order = 50
    fields = (Field("enabled", "Use the broken hook", False),)

    def process(self, image, request, options, ctx):
        raise ValueError("process exploded")


extension = Broken()
