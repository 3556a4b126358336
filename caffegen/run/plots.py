"""What every plot shares: the names it shows (classes, files, runs, outputs) are drawn as they are written.

matplotlib reads text between two ``$`` as mathematics, and fails on what it cannot parse (a class
folder called ``$x_$``); caffegen's plots turn that off. matplotlib is imported only when one is drawn.
"""

import functools


def plain_text(draw):
    """Decorate a function that builds and saves a figure: every text in it is drawn as plain text."""
    @functools.wraps(draw)
    def drawing(*args, **kwargs):
        import matplotlib
        with matplotlib.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)
    return drawing
