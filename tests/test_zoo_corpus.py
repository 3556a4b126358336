"""The zoo corpus the tests read: its manifest, where it is found, its verified download, and the skip without it."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, ZOO
from zoo_corpus import MANIFEST, VARIABLE, corpus_problem, fetch_corpus, locate_corpus, manifest_remotes

from caffegen.errors import CaffegenError
from caffegen.io.download import Remote

FILES = {"a/net.prototxt": b'name: "a"\n', "b/solver.prototxt": b"base_lr: 0.01\n"}


def remotes_of(files, url="http://127.0.0.1:9/"):
    return [Remote(url=url + name, name=name, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
            for name, data in files.items()]


def write_corpus(folder, files=FILES):
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def test_each_file_has_a_source_at_a_fixed_commit_a_sha256_a_size_and_a_licence():
    entries = json.loads(MANIFEST.read_text(encoding="utf-8"))["files"]
    assert len({entry["file"] for entry in entries}) == len(entries) >= 90
    for entry in entries:
        assert re.fullmatch(r"https://raw\.githubusercontent\.com/[\w.-]+/[\w.-]+/[0-9a-f]{40}/\S+", entry["url"])
        assert entry["url"].endswith("/" + entry["file"].split("/")[-1])
        assert re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]) and entry["size"] > 0 and entry["licence"].strip()


@pytest.mark.zoo
def test_the_corpus_found_holds_every_file_of_the_manifest_unchanged():
    assert corpus_problem(ZOO, manifest_remotes()) is None


class TestLocate:
    def test_the_variable_comes_first_then_the_folder_beside_the_repository_then_the_cache(self, tmp_path):
        given, shared, home = (write_corpus(tmp_path / name) for name in ("given", "shared", "home/test-zoo"))
        environ = {VARIABLE: str(given), "CAFFEGEN_HOME": str(tmp_path / "home")}
        assert locate_corpus(environ, remotes_of(FILES), shared).folder == given
        assert locate_corpus({"CAFFEGEN_HOME": str(tmp_path / "home")}, remotes_of(FILES), shared).folder == shared
        found = locate_corpus({"CAFFEGEN_HOME": str(tmp_path / "home")}, remotes_of(FILES), tmp_path / "none")
        assert (found.found, found.folder) == (True, home)
        assert found.how == f"the download cache: {home}"

    def test_a_folder_with_an_altered_or_missing_file_is_passed_over_and_named(self, tmp_path):
        given = write_corpus(tmp_path / "given", dict(FILES, **{"a/net.prototxt": b'name: "b"\n'}))
        shared = write_corpus(tmp_path / "shared", {"a/net.prototxt": FILES["a/net.prototxt"]})
        environ = {VARIABLE: str(given), "CAFFEGEN_HOME": str(tmp_path / "home")}
        corpus = locate_corpus(environ, remotes_of(FILES), shared)
        assert not corpus.found and corpus.folder == tmp_path / "home" / "test-zoo"
        assert f"${VARIABLE} {given}: a/net.prototxt: checksum mismatch" in corpus.how
        assert f"beside the repository {shared}: b/solver.prototxt is missing" in corpus.how
        assert "the download cache" in corpus.how and "no such folder" in corpus.how
        assert "python tests/zoo_corpus.py" in corpus.skip_reason and VARIABLE in corpus.skip_reason


class TestFetch:
    def test_every_file_is_downloaded_verified_and_then_found(self, server, tmp_path):
        for name, data in FILES.items():
            server.add(f"/mirror/{name}", data)
        folder = fetch_corpus(tmp_path / "corpus", mirror=f"{server.url}/mirror", remotes=remotes_of(FILES))
        assert {name: (folder / name).read_bytes() for name in FILES} == FILES
        assert locate_corpus({VARIABLE: str(folder)}, remotes_of(FILES), tmp_path / "none").folder == folder

    def test_a_file_that_differs_from_the_manifest_is_refused_and_not_put_in_place(self, server, tmp_path):
        for name, data in FILES.items():
            server.add(f"/mirror/{name}", data.upper())
        with pytest.raises(CaffegenError, match=r"checksum mismatch: expected sha256 [0-9a-f]{64}, got"):
            fetch_corpus(tmp_path / "corpus", mirror=f"{server.url}/mirror", remotes=remotes_of(FILES))
        assert not (tmp_path / "corpus" / "a" / "net.prototxt").exists()

    @pytest.mark.zoo
    def test_the_helper_fetches_the_whole_manifest_from_a_mirror(self, server, tmp_path):
        for remote in manifest_remotes():
            server.add(f"/mirror/{remote.name}", (ZOO / remote.name).read_bytes())
        into = tmp_path / "corpus"
        done = subprocess.run([sys.executable, ROOT / "tests" / "zoo_corpus.py", "--into", into, "--mirror",
                               f"{server.url}/mirror"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert f"complete and verified in {into}" in done.stdout
        assert locate_corpus({VARIABLE: str(into)}, shared=tmp_path / "none").folder == into

    def test_the_helper_says_in_one_line_why_it_could_not(self, tmp_path):
        done = subprocess.run([sys.executable, ROOT / "tests" / "zoo_corpus.py", "--into", tmp_path / "c", "--mirror",
                               "http://127.0.0.1:9/"], capture_output=True, text=True)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "cannot connect" in done.stderr


NEEDS_THE_ZOO = '''
import pytest


@pytest.mark.zoo
def test_marked():
    pass


def test_by_fixture(zoo):
    pass


def test_pure():
    pass
'''


class TestWithoutTheCorpus:
    """The test suite of a clone with nothing beside it: its zoo tests skip, saying how; under CI it stops."""

    @pytest.fixture
    def clone(self, tmp_path):
        tests = tmp_path / "clone" / "tests"
        tests.mkdir(parents=True)
        for name in ("conftest.py", "slurm_cluster.py", "served.py", "zoo_corpus.py", "zoo_corpus.json"):
            shutil.copy(ROOT / "tests" / name, tests)
        shutil.copy(ROOT / "pyproject.toml", tests.parent)
        (tests / "test_needs_zoo.py").write_text(NEEDS_THE_ZOO)
        return tests.parent

    def pytest(self, clone, tmp_path, **environ):
        env = {name: value for name, value in os.environ.items() if name not in (VARIABLE, "CI")}
        env.update(CAFFEGEN_HOME=str(tmp_path / "empty-home"), **environ)
        return subprocess.run([sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider", "tests"],
                              cwd=clone, env=env, capture_output=True, text=True)

    def test_zoo_tests_skip_with_one_line_that_says_how_to_get_it(self, clone, tmp_path):
        done = self.pytest(clone, tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "1 passed, 2 skipped" in done.stdout
        skips = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
        assert len(skips) == 2 and all("run `python tests/zoo_corpus.py` to download them" in line for line in skips)
        assert "zoo corpus: beside the repository" in done.stdout  # the header says where it looked

    def test_under_ci_a_missing_corpus_is_an_error(self, clone, tmp_path):
        done = self.pytest(clone, tmp_path, CI="true")
        assert done.returncode != 0
        assert "the zoo corpus is required in CI" in done.stdout + done.stderr
