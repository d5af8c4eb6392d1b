"""The engine: requests, models, pipelines, samplers, seeds, jobs and outputs. Never imports gradio.

docs/layout.md maps its packages and the direction of imports between them."""
