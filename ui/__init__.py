"""The browser UI (Gradio) and the HTTP API: they turn user input into engine requests."""
