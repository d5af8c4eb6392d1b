"""Text from outside the app (git's answers, URLs, file paths, error text) put into a gr.Markdown
so that it shows exactly as written.

HTML-escaping is the wrong tool there: Markdown reads `&#x27;` as an apostrophe only outside a
link, and a URL in the text becomes a link that swallows the entity after it (a refused clone
showed "unable to access 'http://host/x.git/&#x27;"). Markdown's own escape is a backslash
before an ASCII punctuation character: the character then stands for itself, never for markup,
an HTML tag, an entity or the start of a link.
"""

from __future__ import annotations

import re
import string

_PUNCTUATION = re.compile(f"([{re.escape(string.punctuation)}])")


def literal(text: str) -> str:
    """`text` as Markdown source that renders as exactly `text`."""
    return _PUNCTUATION.sub(r"\\\1", str(text))
