"""The published Caffe model definitions the tests read, found or fetched through ``zoo_corpus.json``.

The manifest names each file with its public source at a fixed commit, its SHA-256, its size and its
licence. A folder holding every file, each verified, is looked for in ``$CAFFEGEN_TEST_ZOO``, then in
``../shared/fixtures/zoo`` beside the repository, then in the download cache that
``python tests/zoo_corpus.py`` fills (under ``$CAFFEGEN_HOME``, checksum-verified like ``zoo get``).
"""

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = Path(__file__).with_name("zoo_corpus.json")
VARIABLE = "CAFFEGEN_TEST_ZOO"
SHARED = ROOT.parent / "shared" / "fixtures" / "zoo"
FETCH_COMMAND = "python tests/zoo_corpus.py"


def manifest_remotes(manifest=MANIFEST):
    """The manifest's files as download remotes, named by their path inside the corpus."""
    from caffegen.io.download import Remote
    entries = json.loads(Path(manifest).read_text(encoding="utf-8"))["files"]
    return [Remote(url=entry["url"], name=entry["file"], sha256=entry["sha256"], size=entry["size"],
                   checksum_from=str(manifest)) for entry in entries]


def cache_folder(environ=None):
    """Where ``fetch_corpus`` puts the corpus by default."""
    from caffegen.io.download import cache_home
    return cache_home(environ) / "test-zoo"


@dataclass(frozen=True)
class Corpus:
    """Where the corpus is (or where a download would put it), and how it was found or why not."""

    folder: Path
    found: bool
    how: str  # where it came from, or why no candidate holds it

    @property
    def skip_reason(self):
        return (f"the published zoo nets are not here: run `{FETCH_COMMAND}` to download them "
                f"({len(manifest_remotes())} files, checksum-verified), or set ${VARIABLE} to a folder of them")


def locate_corpus(environ=None, remotes=None, shared=SHARED):
    """The first candidate folder that holds every file of the manifest, verified; else where to fetch it."""
    environ = os.environ if environ is None else environ
    remotes = manifest_remotes() if remotes is None else remotes
    candidates = [(f"${VARIABLE}", Path(environ[VARIABLE]))] if environ.get(VARIABLE) else []
    candidates += [("beside the repository", shared), ("the download cache", cache_folder(environ))]
    refused = []
    for label, folder in candidates:
        problem = corpus_problem(folder, remotes)
        if problem is None:
            return Corpus(folder, True, f"{label}: {folder}")
        refused.append(f"{label} {folder}: {problem}")
    return Corpus(cache_folder(environ), False, "; ".join(refused))


def corpus_problem(folder, remotes):
    """Why ``folder`` does not hold the corpus (a missing or altered file, named), or None."""
    from caffegen.io.download import problem_with
    if not Path(folder).is_dir():
        return "no such folder"
    for remote in remotes:
        path = Path(folder) / remote.name
        if not path.is_file():
            return f"{remote.name} is missing"
        problem = problem_with(remote, path)
        if problem:
            return f"{remote.name}: {problem}"
    return None


def corpus_folder():
    """The corpus's folder, for the benches: exits with how to get it where it is absent."""
    corpus = locate_corpus()
    if not corpus.found:
        sys.exit(f"error: {corpus.skip_reason}")
    return corpus.folder


def fetch_corpus(folder=None, mirror=None, remotes=None, reporter=None):
    """Download every file of the manifest into ``folder`` (default: the cache), each verified; return the folder.

    ``mirror`` is a URL or a local folder laid out as the corpus is; files already there and whole are kept.
    """
    from caffegen.io.download import fetch, mirror_url
    folder = Path(folder) if folder else cache_folder()
    for remote in manifest_remotes() if remotes is None else remotes:
        url = mirror_url(mirror, *remote.name.split("/")) if mirror else None
        fetch(remote, folder, url=url, reporter=reporter)
    return folder


def main(argv=None):
    """``python tests/zoo_corpus.py [--into DIR] [--mirror URL]``: fetch the corpus, one line on success or error."""
    import argparse

    from caffegen.errors import CaffegenError
    from caffegen.reporting import reporter_for_stderr
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--into", type=Path, help="folder to fill (default: the download cache)")
    parser.add_argument("--mirror", help="fetch from this URL or folder instead of each file's source")
    options = parser.parse_args(argv)
    try:
        folder = fetch_corpus(options.into, options.mirror, reporter=reporter_for_stderr())
    except CaffegenError as error:
        print(f"zoo_corpus: error: {error}", file=sys.stderr)
        return 2
    print(f"the zoo corpus is complete and verified in {folder}")
    if options.into:
        print(f"point the tests at it with: export {VARIABLE}={folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
