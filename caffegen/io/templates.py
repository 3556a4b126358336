"""The jinja2 templates of the files caffegen writes: solvers, train.sh/.bat, Slurm scripts, HTML reports (escaped)."""

import functools

import jinja2

from caffegen import __version__
from caffegen.io.resources import resource_dir


def render_template(name, newline="\n", **values):
    """The text of template ``name`` with ``values`` (and caffegen's ``version``), lines ending in ``newline``."""
    return _environment(newline).get_template(name).render(version=__version__, **values)


@functools.lru_cache(maxsize=None)
def _environment(newline):
    return jinja2.Environment(loader=jinja2.FileSystemLoader(resource_dir("templates")),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                              autoescape=lambda name: name.endswith(".html.j2"),
                              newline_sequence=newline)
