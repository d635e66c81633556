"""The answer's pages: the card (card.py) that `python -m trainkit recommend`'s answer.html and every
matrix report open on, and its Markdown. The package's face is the card's four functions."""

from .card import card, markdown, page, write_pages

__all__ = ["card", "markdown", "page", "write_pages"]
