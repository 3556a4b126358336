"""The model zoo: its catalogue, the verified and resumable download, and prepare --model.

Every download comes from the local HTTP server of ``served.py``; no test reaches the internet. It
serves prototxts of the zoo corpus and a small caffemodel written here, and can ignore Range
requests, drop a connection half-way, answer 404, send too much, trickle, redirect or stay silent.
"""

import hashlib
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import DIGITS, ZOO, assert_one_line_error, run_caffegen
from served import silent

from caffegen.errors import CaffegenError
from caffegen.io.caffemodel import write_caffemodel
from caffegen.io.download import Limits, Remote, cache_home, fetch, part_path, record_path
from caffegen.io.meanfile import read_mean_file
from caffegen.io.prototxt import read_net
from caffegen.io.schema import BVLC
from caffegen.io.zoo import fetch_model, load_catalog, read_catalog, read_class_names
from caffegen.job.prepare import JobOptions, prepare
from caffegen.job.zoo import with_zoo_model
from caffegen.net.inspect import inspect_net
from caffegen.net.netview import TEST
from caffegen.net.wiring import DataSettings

LENET = ZOO / "mnist" / "lenet.prototxt"
BUILT_IN = read_catalog(Path(__file__).resolve().parents[1] / "models" / "zoo.json")
LICENCES = {"unrestricted", "non-commercial", "BSD-2-Clause", "BSD-3-Clause", "MIT"}


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh $CAFFEGEN_HOME, and no zoo settings from the environment."""
    folder = tmp_path / "home"
    monkeypatch.setenv("CAFFEGEN_HOME", str(folder))
    for name in ("CAFFEGEN_ZOO_CATALOG", "CAFFEGEN_ZOO_MIRROR"):
        monkeypatch.delenv(name, raising=False)
    return folder


def lenet_weights(path):
    """A small caffemodel for LeNet: conv1's weights."""
    rng = np.random.default_rng(0)
    write_caffemodel(path, [(BVLC.LayerParameter(name="conv1", type="Convolution"),
                             [rng.standard_normal((20, 1, 5, 5)).astype(np.float32), np.zeros(20, np.float32)])],
                     name="LeNet")
    return path.read_bytes()


def sha1(data):
    return hashlib.sha1(data).hexdigest()


@pytest.fixture
def team(server, tmp_path, zoo):
    """A team catalogue of one model, LeNet, served by the test server: {'catalog', 'weights', 'net', …}."""
    net = LENET.read_bytes()
    weights = lenet_weights(tmp_path / "lenet.caffemodel")
    mean = BVLC.BlobProto()
    mean.shape.dim.extend([1, 1, 28, 28])
    mean.data.extend([33.0] * 28 * 28)
    entry = {
        "task": "digits", "licence": "MIT",
        "net": {"url": server.add("/lenet/lenet.prototxt", net), "sha1": sha1(net), "size": len(net)},
        "weights": {"url": server.add("/lenet/lenet.caffemodel", weights), "sha1": sha1(weights)},
        "class_names": [str(digit) for digit in range(10)],
        "preprocessing": {"channel_order": "gray", "input_size": [28, 28], "mean_value": [33], "scale": 0.0125},
    }
    catalog = write_catalog(tmp_path / "team.json", {"lenet": entry})
    return {"catalog": catalog, "entry": entry, "net": net, "weights": weights, "mean": mean.SerializeToString()}


def write_catalog(path, models):
    path.write_text(json.dumps({"caffegen_zoo": 1, "models": models}))
    return path


def remote(server, path, data, **known):
    return Remote(server.add(path, data), Path(path).name, **known)


# --- the built-in catalogue ---------------------------------------------------------------------


def fixture_by_sha1():
    return {sha1(path.read_bytes()): path for path in ZOO.rglob("*.prototxt")}


def input_shape(net):
    for layer in net.layer:
        if layer.type == "Input":
            return list(layer.input_param.shape[0].dim)
    return list(net.input_shape[0].dim) if net.input_shape else list(net.input_dim)


class TestBuiltInCatalogue:
    @pytest.fixture
    def catalog(self):
        return BUILT_IN

    def test_lists_the_published_models(self, catalog):
        names = {model.name for model in catalog}
        assert names >= {"bvlc_alexnet", "bvlc_reference_caffenet", "bvlc_googlenet", "bvlc_reference_rcnn_ilsvrc13",
                         "finetune_flickr_style", "squeezenet_v1.0", "squeezenet_v1.1", "resnet50", "resnet101",
                         "resnet152", "mobilenet_v1", "mobilenet_v2"}

    def test_the_published_checksums(self, catalog):
        found = {model.name: model.weights for model in catalog}
        assert {name: found[name].sha1 for name in ("bvlc_alexnet", "bvlc_reference_caffenet", "bvlc_googlenet",
                                                    "bvlc_reference_rcnn_ilsvrc13", "finetune_flickr_style",
                                                    "squeezenet_v1.1")} == {
            "bvlc_alexnet": "9116a64c0fbe4459d18f4bb6b56d647b63920377",
            "bvlc_reference_caffenet": "4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46",
            "bvlc_googlenet": "405fc5acd08a3bb12de8ee5e23a96bec22f08204",
            "bvlc_reference_rcnn_ilsvrc13": "bdd8abb885819cba5e2fe1eb36235f2319477e64",
            "finetune_flickr_style": "b61b5cef7d771b53b0c488e78d35ccadc073e9cf",
            "squeezenet_v1.1": "3397f026368a45ae236403ccc81cfcbe8ebe1bd0"}
        assert found["bvlc_alexnet"].url == "http://dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel"
        assert {model.name: model.licence for model in catalog}["finetune_flickr_style"] == "non-commercial"

    def test_the_known_preprocessing(self, catalog):
        models = {model.name: model.preprocessing for model in catalog}
        for name in ("bvlc_alexnet", "bvlc_reference_caffenet", "bvlc_googlenet", "squeezenet_v1.1"):
            assert models[name].mean_value == (104, 117, 123) and models[name].scale is None
        for name in ("mobilenet_v1", "mobilenet_v2"):
            assert (models[name].mean_value, models[name].scale) == ((103.94, 116.78, 123.68), 0.017)
        for name in ("resnet50", "resnet101", "resnet152"):
            assert models[name].mean_file.name == "ResNet_mean.binaryproto"
            assert models[name].resize == (224, 224)  # the size of that mean file

    @pytest.mark.zoo
    @pytest.mark.parametrize("model", BUILT_IN, ids=lambda model: model.name)
    def test_each_entry_is_well_formed(self, model):
        assert model.licence in LICENCES
        assert model.weights.checksum, f"{model.name}: the weights need a published checksum"
        for remote in model.remotes().values():
            assert remote.url.startswith(("https://", "http://")) and remote.checksum
        fixture = fixture_by_sha1().get(model.net.sha1)
        assert fixture is not None, f"{model.name}: its deploy net is none of the zoo fixtures"
        assert fixture.stat().st_size == model.net.size
        net = read_net(fixture).net
        assert input_shape(net)[1:] == [model.preprocessing.channels, *model.preprocessing.input_size]
        params = sum(math.prod(shape) for layer in inspect_net(net, TEST, None).layers for shape in layer.params or ()
                     if shape)
        # The weights hold at least the deploy net's parameters (GoogLeNet's also its side classifiers).
        assert 0.95 <= model.size_mib * 2 ** 20 / (4 * params) <= 2.5, model.name


# --- the download ---------------------------------------------------------------------------------


class TestDownload:
    def test_downloads_verifies_and_then_uses_the_file_there(self, server, tmp_path):
        data = os.urandom(300_000)
        file = remote(server, "/a.bin", data, sha1=sha1(data))
        first = fetch(file, tmp_path)
        assert first.downloaded and first.path.read_bytes() == data
        assert not (tmp_path / "a.bin.part").exists() and not record_path(first.path).exists()
        second = fetch(file, tmp_path)
        assert not second.downloaded and len(server.requests) == 1

    def test_resumes_a_kept_part_with_a_range_request(self, server, tmp_path):
        data = os.urandom(200_000)
        (tmp_path / "a.bin.part").write_bytes(data[:70_000])
        fetch(remote(server, "/a.bin", data, sha1=sha1(data)), tmp_path)
        assert server.requests == [("/a.bin", "bytes=70000-")]
        assert (tmp_path / "a.bin").read_bytes() == data

    def test_a_server_that_ignores_range_is_read_from_the_start(self, server, tmp_path):
        data = os.urandom(200_000)
        server.ignore_range.add("/a.bin")
        (tmp_path / "a.bin.part").write_bytes(data[:70_000])
        fetch(remote(server, "/a.bin", data, sha1=sha1(data)), tmp_path)
        assert (tmp_path / "a.bin").read_bytes() == data

    def test_a_dropped_connection_resumes_and_verifies(self, server, tmp_path):
        data = os.urandom(1_500_000)
        file = remote(server, "/big.bin", data, sha1=sha1(data))
        server.drop_once["/big.bin"] = 600_000
        fetch(file, tmp_path)
        assert server.requests == [("/big.bin", None), ("/big.bin", "bytes=600000-")]
        assert (tmp_path / "big.bin").read_bytes() == data

    def test_without_retries_a_dropped_download_is_kept_and_resumed_next_time(self, server, tmp_path):
        data = os.urandom(1_500_000)
        file = remote(server, "/big.bin", data, sha1=sha1(data))
        server.drop_once["/big.bin"] = 600_000
        with pytest.raises(CaffegenError, match=r"connection dropped after 600000 of 1500000 bytes.*run the command "
                                                r"again to resume"):
            fetch(file, tmp_path, retries=0)
        assert (tmp_path / "big.bin.part").stat().st_size == 600_000 and not (tmp_path / "big.bin").exists()
        fetch(file, tmp_path, retries=0)
        assert server.requests[-1] == ("/big.bin", "bytes=600000-")
        assert (tmp_path / "big.bin").read_bytes() == data and not (tmp_path / "big.bin.part").exists()

    def test_a_checksum_mismatch_keeps_the_part_and_names_both_digests(self, server, tmp_path):
        data = b"not the weights" * 1000
        file = remote(server, "/a.bin", data, sha1="0" * 40)
        with pytest.raises(CaffegenError) as raised:
            fetch(file, tmp_path)
        message = str(raised.value)
        assert message.startswith(f"{server.url}/a.bin: checksum mismatch: expected sha1 {'0' * 40}, got {sha1(data)}")
        assert "kept at" in message and "\n" not in message
        assert (tmp_path / "a.bin.part").read_bytes() == data and not (tmp_path / "a.bin").exists()

    def test_a_good_file_is_not_replaced_by_a_bad_download(self, server, tmp_path):
        good = b"good" * 1000
        (tmp_path / "a.bin").write_bytes(good[:-1] + b"X")  # damaged on disk
        file = remote(server, "/a.bin", b"bad" * 1000, sha1=sha1(good))
        with pytest.raises(CaffegenError, match="checksum mismatch"):
            fetch(file, tmp_path)
        assert (tmp_path / "a.bin").read_bytes() == good[:-1] + b"X"  # what was there stays until a good one comes
        server.files["/a.bin"] = good
        (tmp_path / "a.bin.part").unlink()
        fetch(file, tmp_path)
        assert (tmp_path / "a.bin").read_bytes() == good

    def test_a_resumed_part_that_fails_is_downloaded_again_from_the_start(self, server, tmp_path):
        data = os.urandom(100_000)
        (tmp_path / "a.bin.part").write_bytes(b"\0" * 10_000)  # a corrupt beginning
        fetch(remote(server, "/a.bin", data, sha1=sha1(data)), tmp_path)
        assert server.requests == [("/a.bin", "bytes=10000-"), ("/a.bin", None)]
        assert (tmp_path / "a.bin").read_bytes() == data

    def test_without_a_checksum_the_size_is_checked_and_the_first_sha256_recorded(self, server, tmp_path):
        data = os.urandom(50_000)
        file = remote(server, "/a.bin", data, size=len(data))
        fetched = fetch(file, tmp_path)
        digest = hashlib.sha256(data).hexdigest()
        assert fetched.recorded_sha256 == digest
        assert record_path(fetched.path).read_text() == f"{digest}  a.bin\n"
        # Damaged on disk: found, and not used offline.
        fetched.path.write_bytes(b"\1" + data[1:])
        with pytest.raises(CaffegenError, match=f"expected sha256 {digest}.*run without --offline"):
            fetch(file, tmp_path, offline=True)
        # The publisher's file changed: the new download differs from the first one, and is refused.
        server.files["/a.bin"] = os.urandom(50_000)
        with pytest.raises(CaffegenError, match="differs from the first download"):
            fetch(file, tmp_path)
        server.files["/a.bin"] = data
        (tmp_path / "a.bin.part").unlink()
        assert fetch(file, tmp_path).path.read_bytes() == data

    def test_a_wrong_size_is_refused(self, server, tmp_path):
        file = remote(server, "/a.bin", b"x" * 10, size=11)
        with pytest.raises(CaffegenError, match="expected 11 bytes, got 10"):
            fetch(file, tmp_path)

    def test_a_published_sha256_prefix_is_checked(self, server, tmp_path):
        data = b"mobilenet" * 100
        prefix = hashlib.sha256(data).hexdigest()[:8]
        fetched = fetch(remote(server, "/m.bin", data, sha256=prefix), tmp_path)
        assert fetched.recorded_sha256 == hashlib.sha256(data).hexdigest()
        with pytest.raises(CaffegenError, match="expected sha256 00000000"):
            fetch(remote(server, "/n.bin", data, sha256="00000000"), tmp_path)

    def test_http_404(self, server, tmp_path):
        file = Remote(f"{server.url}/gone.caffemodel", "gone.caffemodel", sha1="0" * 40)
        with pytest.raises(CaffegenError) as raised:
            fetch(file, tmp_path)
        assert str(raised.value).startswith(f"{server.url}/gone.caffemodel: HTTP 404 Not Found")
        assert "--mirror" in str(raised.value)

    def test_no_network(self, tmp_path):
        file = Remote("http://127.0.0.1:9/a.caffemodel", "a.caffemodel", sha1="0" * 40)
        with pytest.raises(CaffegenError, match=r"^http://127.0.0.1:9/a.caffemodel: cannot connect \(.*\): check the "
                                                r"network.*--offline"):
            fetch(file, tmp_path)

    def test_offline_without_a_download(self, tmp_path):
        with pytest.raises(CaffegenError, match="not downloaded yet, and --offline is given"):
            fetch(Remote("http://127.0.0.1:9/a.bin", "a.bin", size=1), tmp_path, offline=True)

    def test_a_full_disk(self, server, tmp_path):
        if not Path("/dev/full").exists():
            pytest.skip("needs /dev/full")
        (tmp_path / "a.bin.part").symlink_to("/dev/full")
        with pytest.raises(CaffegenError, match=r"a.bin: no space left on the device of .*a.bin.part .*free some "
                                                r"space and run again to resume"):
            fetch(remote(server, "/a.bin", os.urandom(2_000_000), size=2_000_000), tmp_path)

    def test_a_web_page_instead_of_the_file_is_named(self, server, tmp_path):
        page = b"<!DOCTYPE html><html><body>Sign in</body></html>"
        with pytest.raises(CaffegenError, match="the server sent a web page"):
            fetch(remote(server, "/a.caffemodel", page, sha1="0" * 40), tmp_path)

    def test_a_server_sending_more_than_the_catalogues_size_is_stopped_there(self, server, tmp_path):
        data = os.urandom(423_850)
        server.overflow["/a.bin"] = 50_000_000  # after the file, with no Content-Length
        with pytest.raises(CaffegenError) as raised:
            fetch(remote(server, "/a.bin", data, size=len(data)), tmp_path)
        message = str(raised.value)
        assert message.startswith(f"{server.url}/a.bin: expected 423850 bytes (the catalogue's size), but the server "
                                  "sent more (")
        came = int(message.split("sent more (")[1].split()[0])
        assert 423_850 < came <= 423_850 + (1 << 20)  # at most one read past the size
        assert "nothing was kept" in message and "\n" not in message
        assert list(tmp_path.iterdir()) == []

    def test_a_larger_announced_size_is_refused_before_downloading(self, server, tmp_path):
        data = os.urandom(423_850)
        server.announce["/a.bin"] = 52_000_000
        with pytest.raises(CaffegenError) as raised:
            fetch(remote(server, "/a.bin", data, size=len(data)), tmp_path)
        assert str(raised.value).startswith(f"{server.url}/a.bin: expected 423850 bytes (the catalogue's size), but "
                                            "the server announces 52000000: nothing was downloaded")
        assert list(tmp_path.iterdir()) == []

    def test_without_a_size_the_download_is_bounded_by_the_largest_file_caffe_reads(self, server, tmp_path):
        data = os.urandom(300_000)
        file = remote(server, "/a.bin", data)
        server.overflow["/a.bin"] = 5_000_000
        with pytest.raises(CaffegenError, match=r"/a.bin: expected at most 400000 bytes \(the catalogue gives no "
                                                r"size, and Caffe reads no larger file\), but the server sent more"):
            fetch(file, tmp_path, limits=Limits(max_size=400_000))
        assert list(tmp_path.iterdir()) == []
        del server.overflow["/a.bin"]
        assert fetch(file, tmp_path, limits=Limits(max_size=400_000)).path.read_bytes() == data

    def test_a_trickling_server_is_stopped_and_the_download_resumes_later(self, server, tmp_path):
        data = os.urandom(1000)
        file = remote(server, "/slow.bin", data, sha1=sha1(data))
        server.drip["/slow.bin"] = 0.05  # 20 bytes a second, each read answered before any timeout
        with pytest.raises(CaffegenError) as raised:
            fetch(file, tmp_path, limits=Limits(min_rate=1024, rate_window_s=0.5))
        part = part_path(tmp_path / "slow.bin")
        assert re.fullmatch(rf"{server.url}/slow.bin: the download stalled: \d+ bytes in the last [0-9.]+ s, under "
                            rf"the 1 KiB/s it needs; run the command again to resume from {part}, or fetch it "
                            r"from a mirror .*", str(raised.value))
        kept = part.stat().st_size
        assert 0 < kept < len(data)
        del server.drip["/slow.bin"]
        assert fetch(file, tmp_path).path.read_bytes() == data
        assert server.requests[-1] == ("/slow.bin", f"bytes={kept}-")

    def test_a_redirect_loop_is_one_line(self, server, tmp_path):
        server.redirects.update({"/a.bin": "/b.bin", "/b.bin": "/a.bin"})
        with pytest.raises(CaffegenError) as raised:
            fetch(Remote(f"{server.url}/a.bin", "a.bin", size=1), tmp_path)
        assert re.fullmatch(rf"{server.url}/a.bin: the server redirects in a loop \(HTTP 302, the last to /\w.bin\): "
                            r"fix its URL in the catalogue, or fetch it from a mirror .*", str(raised.value))

    def test_a_server_that_never_answers(self, tmp_path):
        with silent() as url, pytest.raises(CaffegenError) as raised:
            fetch(Remote(f"{url}/a.bin", "a.bin", size=1), tmp_path, limits=Limits(timeout_s=0.5))
        assert str(raised.value).startswith(f"{url}/a.bin: connected but got no answer within 0.5 s: the server is "
                                            "overloaded or down; try again later")

    def test_the_cache_home(self, tmp_path):
        assert cache_home({"CAFFEGEN_HOME": str(tmp_path)}) == tmp_path
        assert cache_home({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "caffegen"
        assert cache_home({}) == Path.home() / ".cache" / "caffegen"


# --- catalogues and the zoo commands ----------------------------------------------------------------


class TestCatalogues:
    def test_a_team_catalogue_adds_its_models(self, team, home, monkeypatch):
        assert "lenet" not in {model.name for model in load_catalog()}
        assert load_catalog([team["catalog"]]).find("lenet").task == "digits"
        monkeypatch.setenv("CAFFEGEN_ZOO_CATALOG", str(team["catalog"]))
        catalog = load_catalog([team["catalog"]])  # the same file twice counts once
        assert catalog.find("lenet").catalog == team["catalog"] and catalog.find("bvlc_alexnet")

    def test_an_unknown_name_suggests_the_close_ones(self):
        with pytest.raises(CaffegenError, match=r"no model 'alexnet' in the zoo \(did you mean 'bvlc_alexnet'"):
            load_catalog().find("alexnet")

    @pytest.mark.parametrize("change, words", [
        (lambda entry: entry.pop("weights"), "'weights' needs an object with a 'url'"),
        (lambda entry: entry["weights"].update(sha1="abc"), "weights: sha1 'abc' is not a hex digest"),
        (lambda entry: entry["weights"].update(sha="x"), "weights: unknown key 'sha'"),
        (lambda entry: entry["net"].update(url="ftp://host/x.prototxt"), "is not an http(s) or file URL"),
        (lambda entry: entry["preprocessing"].update(channel_order="RGB"), "channel_order must be BGR or gray"),
        (lambda entry: entry["preprocessing"].update(input_size=[28]), "input_size must be a list of 2 numbers"),
        (lambda entry: entry["preprocessing"].update(scale=0), "scale must be a positive number"),
        (lambda entry: entry["weights"].update(name="../x"), "is no plain file name"),
        (lambda entry: entry.pop("licence"), "'licence' is missing"),
    ])
    def test_a_malformed_entry_is_one_line_naming_the_file_and_entry(self, team, home, change, words):
        entry = json.loads(json.dumps(team["entry"]))
        change(entry)
        path = write_catalog(team["catalog"].parent / "bad.json", {"lenet": entry})
        result = run_caffegen("zoo", "list", "--catalog", path)
        assert_one_line_error(result, str(path), "entry 'lenet'", words)

    def test_a_name_with_a_trailing_newline_is_refused(self, team, home):
        path = write_catalog(team["catalog"].parent / "bad.json", {"ok3\n": team["entry"]})
        assert_one_line_error(run_caffegen("zoo", "list", "--catalog", path), str(path), r"entry 'ok3\n'",
                              "a model's name takes letters")
        entry = json.loads(json.dumps(team["entry"]))
        entry["weights"]["url"] += "%0A"  # the file name, from the URL, would end in a newline
        path = write_catalog(team["catalog"].parent / "bad.json", {"ok3": entry})
        assert_one_line_error(run_caffegen("zoo", "list", "--catalog", path), str(path),
                              r"weights: 'lenet.caffemodel\n' is no plain file name")

    def test_malformed_json_names_the_place(self, tmp_path, home):
        path = tmp_path / "bad.json"
        path.write_text('{"caffegen_zoo": 1, "models": {"x": }}')
        assert_one_line_error(run_caffegen("zoo", "list", "--catalog", path), f"{path}:1:", "not a JSON catalogue")

    def test_a_name_already_in_the_zoo_is_refused(self, team, home):
        path = write_catalog(team["catalog"].parent / "dup.json", {"bvlc_alexnet": team["entry"]})
        with pytest.raises(CaffegenError, match="entry 'bvlc_alexnet': already in"):
            load_catalog([path])


class TestZooCommands:
    def test_list_then_get_then_list(self, team, home, server, tmp_path):
        env = dict(os.environ, CAFFEGEN_ZOO_CATALOG=str(team["catalog"]))
        listed = run_caffegen("zoo", "list", env=env)
        assert listed.returncode == 0, listed.stderr
        header, *rows = listed.stdout.splitlines()
        assert header.split() == ["NAME", "TASK", "INPUT", "SIZE", "LICENCE", "VERIFIED", "BY", "DOWNLOADED"]
        lenet = next(row for row in rows if row.startswith("lenet "))
        assert "28×28" in lenet and "MIT" in lenet and "sha1" in lenet and lenet.endswith("no")
        assert any(row.startswith("mobilenet_v1 ") and "sha256 prefix" in row for row in rows)
        got = run_caffegen("zoo", "get", "lenet", "-o", tmp_path / "out", env=env)
        assert got.returncode == 0, got.stderr
        folder = home / "zoo" / "lenet"
        assert (folder / "lenet.prototxt").read_bytes() == team["net"]
        assert (folder / "lenet.caffemodel").read_bytes() == team["weights"]
        assert read_class_names(folder / "classes.txt") == [str(digit) for digit in range(10)]
        assert (tmp_path / "out" / "lenet.caffemodel").read_bytes() == team["weights"]
        assert "10 class names" in got.stderr and "licence: MIT" in got.stderr and "sha1 verified" in got.stderr
        relisted = run_caffegen("zoo", "list", env=env)
        assert next(row for row in relisted.stdout.splitlines() if row.startswith("lenet ")).endswith("yes")
        requests = len(server.requests)
        again = run_caffegen("zoo", "get", "lenet", "--offline", env=env)
        assert again.returncode == 0, again.stderr
        assert "already there" in again.stderr and len(server.requests) == requests

    def test_get_from_a_mirror_folder_or_url(self, team, home, server, tmp_path):
        mirror = tmp_path / "mirror" / "lenet"
        mirror.mkdir(parents=True)
        (mirror / "lenet.prototxt").write_bytes(team["net"])
        (mirror / "lenet.caffemodel").write_bytes(team["weights"])
        server.files.clear()  # the model's own URLs answer 404 now
        got = run_caffegen("zoo", "get", "lenet", "--catalog", team["catalog"], "--mirror", mirror.parent)
        assert got.returncode == 0, got.stderr
        assert (home / "zoo" / "lenet" / "lenet.caffemodel").read_bytes() == team["weights"]
        server.add("/m/lenet/lenet.prototxt", team["net"])
        server.add("/m/lenet/lenet.caffemodel", team["weights"])
        env = dict(os.environ, CAFFEGEN_ZOO_MIRROR=f"{server.url}/m", CAFFEGEN_HOME=str(tmp_path / "other"))
        again = run_caffegen("zoo", "get", "lenet", "--catalog", team["catalog"], env=env)
        assert again.returncode == 0, again.stderr
        assert ("/m/lenet/lenet.caffemodel", None) in server.requests

    def test_get_errors_are_one_line(self, team, home, server):
        server.files.clear()
        result = run_caffegen("zoo", "get", "lenet", "--catalog", team["catalog"])
        assert_one_line_error(result, f"{server.url}/lenet/lenet.prototxt", "HTTP 404")
        assert_one_line_error(run_caffegen("zoo", "get", "lenet", "--catalog", team["catalog"], "--offline"),
                              "not downloaded yet, and --offline is given")
        assert_one_line_error(run_caffegen("zoo", "get", "lenett", "--catalog", team["catalog"]),
                              "no model 'lenett'", "did you mean 'lenet'")

    def test_fetch_model_writes_inline_class_names(self, team, home):
        model = load_catalog([team["catalog"]]).find("lenet")
        fetched = fetch_model(model)
        assert fetched.net.name == "lenet.prototxt" and fetched.mean_file is None
        assert read_class_names(fetched.class_names) == [str(digit) for digit in range(10)]


# --- prepare --model, mean files, --scale, and deploy nets without preprocessing ----------------------


class TestPrepareModel:
    def test_prepare_with_a_zoo_model_uses_its_files_and_preprocessing(self, team, home, images, tmp_path):
        result = run_caffegen("prepare", "--model", "lenet", "--catalog", team["catalog"], "--data", images,
                              "-o", tmp_path / "run")
        assert result.returncode == 0, result.stderr
        assert "deploy-only" not in result.stderr and "base model: the zoo's lenet (licence: MIT)" in result.stderr
        manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
        assert manifest["inputs"]["model"]["name"] == "lenet"
        assert manifest["inputs"]["weights"]["path"] == str(home / "zoo" / "lenet" / "lenet.caffemodel")
        assert manifest["preprocessing"]["mean_value"] == [33]
        assert manifest["preprocessing"]["scale"] == pytest.approx(0.0125)
        assert manifest["preprocessing"]["channel_order"] == "gray"
        # An option given wins over the zoo's.
        result = run_caffegen("prepare", "--model", "lenet", "--catalog", team["catalog"], "--data", images,
                              "--scale", "0.5", "--mean-value", "10", "--offline", "-o", tmp_path / "run2")
        assert result.returncode == 0, result.stderr
        manifest = json.loads((tmp_path / "run2" / "manifest.json").read_text())
        assert (manifest["preprocessing"]["mean_value"], manifest["preprocessing"]["scale"]) == ([10], 0.5)

    def test_a_zoo_mean_file_is_downloaded_checked_and_recorded(self, team, server, home, images, tmp_path):
        entry = json.loads(json.dumps(team["entry"]))
        mean = team["mean"]
        entry["preprocessing"] = {"channel_order": "gray", "input_size": [28, 28], "resize": [28, 28],
                                  "mean_file": {"url": server.add("/lenet/mean.binaryproto", mean), "sha1": sha1(mean)}}
        catalog = write_catalog(tmp_path / "resnet_like.json", {"lenet_mean": entry})
        result = run_caffegen("prepare", "--model", "lenet_mean", "--catalog", catalog, "--data", images,
                              "-o", tmp_path / "run")
        assert result.returncode == 0, result.stderr
        manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
        assert manifest["inputs"]["mean_file"]["path"] == str(home / "zoo" / "lenet_mean" / "mean.binaryproto")
        assert manifest["preprocessing"]["mean_file_shape"] == [1, 1, 28, 28]
        assert manifest["preprocessing"]["resize"] == [28, 28]
        # Images resized otherwise than the mean file: Caffe would abort, so prepare refuses.
        refused = run_caffegen("prepare", "--model", "lenet_mean", "--catalog", catalog, "--data", images,
                               "--resize", "32", "--gpu", "cpu", "-o", tmp_path / "run2")
        assert_one_line_error(refused, "the mean file is 28×28", "resized to 32×32", "--mean-value 33.00")

    def test_model_and_net_are_exclusive_and_one_is_needed(self, team, images, tmp_path):
        both = run_caffegen("prepare", "--model", "lenet", "--net", LENET, "--data", images, "-o", tmp_path / "r")
        assert_one_line_error(both, "give --model or --net/--weights, not both")
        neither = run_caffegen("prepare", "--data", images, "-o", tmp_path / "r")
        assert_one_line_error(neither, "give the base model: --net and --weights, or --model NAME")

    def test_cached_features_on_a_deploy_only_zoo_net_resize_to_its_input(self, team, home, images, tmp_path):
        model = load_catalog([team["catalog"]]).find("lenet")
        fetched = fetch_model(model)
        options = with_zoo_model(JobOptions(net=None, weights=None, data=images, freeze_upto="conv1",
                                            cache_features=True), fetched)
        job = prepare(options, tmp_path / "run")
        data = [layer for layer in read_net(tmp_path / "run" / "train_val.prototxt").net.layer
                if layer.type == "ImageData"]
        sizes = [(layer.image_data_param.new_height, layer.transform_param.crop_size) for layer in data]
        assert sizes == [(28, 28), (28, 28)]
        assert job.manifest.cache_features and job.manifest.input_shape == (1, 1, 28, 28)


def prepare_lenet(weights, images, *args):
    """caffegen prepare on LeNet's deploy net, as a user runs it."""
    return run_caffegen("prepare", "--gpu", "cpu", "--net", LENET, "--weights", weights, "--data", images, *args)


@pytest.fixture
def weights(tmp_path, zoo):
    """Weights for the zoo's LeNet (the tests that take them prepare it)."""
    path = tmp_path / "lenet.caffemodel"
    lenet_weights(path)
    return path


def write_mean(path, shape, value=50.0):
    blob = BVLC.BlobProto()
    blob.shape.dim.extend(shape)
    blob.data.extend([value] * math.prod(shape))
    path.write_bytes(blob.SerializeToString())
    return path


class TestPreprocessing:
    def test_a_mean_file_is_read_checked_and_its_shape_recorded(self, images, weights, tmp_path):
        mean = write_mean(tmp_path / "mean.binaryproto", [1, 1, 32, 32])
        job = prepare(JobOptions(net=LENET, weights=weights, data=images, mean_file=mean), tmp_path / "run")
        assert job.manifest.preprocessing["mean_file"] == "mean.binaryproto"
        assert job.manifest.preprocessing["mean_file_shape"] == [1, 1, 32, 32]
        assert job.manifest.inputs["mean_file"]["path"] == str(mean)
        assert (tmp_path / "run" / "mean.binaryproto").read_bytes() == mean.read_bytes()
        net = read_net(tmp_path / "run" / "train_val.prototxt").net
        assert {layer.transform_param.mean_file for layer in net.layer if layer.type == "ImageData"} == \
            {"mean.binaryproto"}

    def test_the_legacy_shape_fields_are_read(self, tmp_path):
        blob = BVLC.BlobProto(num=1, channels=3, height=2, width=2)
        blob.data.extend([1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3])
        (tmp_path / "m.binaryproto").write_bytes(blob.SerializeToString())
        mean = read_mean_file(tmp_path / "m.binaryproto")
        assert (mean.shape, mean.channel_means) == ((1, 3, 2, 2), (1.0, 2.0, 3.0))

    @pytest.mark.parametrize("content, words", [
        (b"\xff\xff\xff\xff not a blob", "not a mean file"),
        (None, "holds 3"),
    ])
    def test_an_unreadable_mean_file_is_one_line(self, images, weights, tmp_path, content, words):
        path = tmp_path / "bad.binaryproto"
        if content is None:
            blob = BVLC.BlobProto()
            blob.shape.dim.extend([1, 1, 32, 32])
            blob.data.extend([1, 2, 3])
            content = blob.SerializeToString()
        path.write_bytes(content)
        result = prepare_lenet(weights, images, "--mean-file", path, "-o", tmp_path / "run")
        assert_one_line_error(result, str(path), words)
        assert not (tmp_path / "run").exists()

    def test_a_mean_file_of_other_channels_is_refused(self, images, weights, tmp_path):
        mean = write_mean(tmp_path / "mean.binaryproto", [1, 3, 32, 32])
        result = prepare_lenet(weights, images, "--mean-file", mean, "-o", tmp_path / "run")
        assert_one_line_error(result, "the mean file has 3 channel(s)", "gray images of 1")

    def test_a_mean_file_of_another_size_than_the_images_is_refused_with_the_fix(self, images, weights, tmp_path):
        mean = write_mean(tmp_path / "mean.binaryproto", [1, 1, 28, 28], value=40)
        result = prepare_lenet(weights, images, "--mean-file", mean, "-o", tmp_path / "run")
        assert_one_line_error(result, "the mean file is 28×28", "resized to 32×32", "--resize 28,28",
                              "--mean-value 40.00")
        fixed = prepare_lenet(weights, images, "--mean-file", mean, "--resize", "28", "-o", tmp_path / "run")
        assert fixed.returncode == 0, fixed.stderr

    def test_mean_value_and_mean_file_are_exclusive(self, images, weights, tmp_path):
        mean = write_mean(tmp_path / "mean.binaryproto", [1, 1, 32, 32])
        result = prepare_lenet(weights, images, "--mean-file", mean, "--mean-value", "3", "-o", tmp_path / "run")
        assert_one_line_error(result, "give --mean-value or --mean-file, not both")

    def test_scale_sets_every_data_layer(self, images, weights, tmp_path):
        job = prepare(JobOptions(net=LENET, weights=weights, data=images, data_settings=DataSettings(
            mean_value=(33,), scale=0.017)), tmp_path / "run")
        net = read_net(tmp_path / "run" / "train_val.prototxt").net
        assert [layer.transform_param.scale for layer in net.layer if layer.type == "ImageData"] == \
            pytest.approx([0.017, 0.017])
        assert job.manifest.preprocessing["scale"] == pytest.approx(0.017)

    def test_a_deploy_only_net_without_preprocessing_trains_after_a_warning(self, images, weights, tmp_path):
        result = prepare_lenet(weights, images, "-o", tmp_path / "a")
        assert result.returncode == 0, result.stderr
        warning = next(line for line in result.stderr.splitlines() if "deploy-only" in line)
        for words in ("104,117,123", "--mean-value", "--mean-file", "0.017", "--scale", "--model NAME"):
            assert words in warning
        assert warning.endswith("--model NAME uses a zoo model with its own preprocessing")
        assert (tmp_path / "a" / "manifest.json").is_file()
        given = prepare_lenet(weights, images, "--mean-value", "33", "-o", tmp_path / "b")
        assert given.returncode == 0 and "deploy-only" not in given.stderr

    @pytest.mark.zoo
    def test_a_zoo_deploy_net_is_named_with_its_own_preprocessing(self, images, tmp_path):
        unrelated = tmp_path / "unrelated.caffemodel"
        write_caffemodel(unrelated, [(BVLC.LayerParameter(name="elsewhere", type="InnerProduct"),
                                      [np.zeros((2, 2), np.float32)])])
        warnings = []
        prepare(JobOptions(net=ZOO / "mobilenet" / "mobilenet_deploy.prototxt", weights=unrelated, data=images,
                           data_settings=DataSettings(batch_size=2, val_batch_size=2)), tmp_path / "run",
                warn=warnings.append, force=True)
        assert len(warnings) == 1
        assert "the deploy net of the zoo's 'mobilenet_v1'" in warnings[0]
        assert "--model mobilenet_v1, or --mean-value 103.94,116.78,123.68 --scale 0.017" in warnings[0]

    def test_a_net_with_data_layers_gets_no_warning(self, images, tmp_path):
        warnings = []
        prepare(JobOptions(net=DIGITS / "train_val.prototxt", weights=DIGITS / "digits.caffemodel", data=images),
                tmp_path / "run", warn=warnings.append)
        assert warnings == []


