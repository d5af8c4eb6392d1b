"""Prompts: parsing A1111 prompt syntax (prompt_parser/), encoding it into conditioning, and saved styles."""
