"""Extensions: built-in and third-party add-ons that hook into generation. Never imports gradio."""
