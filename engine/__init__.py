"""The engine: requests, models, pipelines, samplers, seeds, jobs and outputs. Never imports gradio."""
