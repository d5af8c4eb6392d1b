"""A folder that looks like an extension but exports nothing."""

VALUE = 1
