"""Postprocessing of finished images: the Extras tab, upscalers (and their networks), face restoration, LDSR and interrogation."""
