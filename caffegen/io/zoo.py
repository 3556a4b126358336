"""The model zoo: a catalogue of pretrained models, and the verified download of their files.

The built-in catalogue is ``models/zoo.json``. ``$CAFFEGEN_ZOO_CATALOG`` (files separated by
``os.pathsep``) and ``--catalog FILE`` add entries in the same format, so that a team can list its
own models. Each entry names its deploy net, its weights, its mean file if any and its class
names, each a URL with what the file must be (a SHA-1 where the source publishes one, else a size),
and the preprocessing the model expects. The files of model NAME are kept in
``<cache>/zoo/NAME/``; a mirror (``--mirror URL`` or ``$CAFFEGEN_ZOO_MIRROR``) serves the same
names as ``URL/NAME/FILE``, the layout of that folder, so a copy of it is a mirror.
"""

import difflib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from caffegen.errors import CaffegenError, did_you_mean
from caffegen.io.download import PART, Fetched, Remote, cache_home, fetch, mirror_url, part_path
from caffegen.io.files import file_digest, write_atomic
from caffegen.io.resources import resource_dir

CATALOG_VARIABLE = "CAFFEGEN_ZOO_CATALOG"
MIRROR_VARIABLE = "CAFFEGEN_ZOO_MIRROR"
BUILT_IN = "zoo.json"
FORMAT = 1
INLINE_NAMES = "classes.txt"
CHANNEL_ORDERS = {"BGR": 3, "gray": 1}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a whole name: matched with fullmatch
FILE_KEYS = {"url", "name", "sha1", "sha256", "size", "size_mib", "checksum_from"}
ENTRY_KEYS = {"task", "licence", "homepage", "net", "weights", "class_names", "preprocessing", "note"}
PREPROCESSING_KEYS = {"channel_order", "input_size", "mean_value", "mean_file", "scale", "resize"}
# What each model's folder holds, in the order they are fetched.
ROLES = ("net", "weights", "mean_file", "class_names")


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects of an image: Caffe's BGR (or gray) channels, the mean subtracted, then scaled."""

    channel_order: str
    input_size: tuple  # (height, width) of the deploy net's input
    mean_value: tuple = ()
    mean_file: Remote = None
    scale: float = None
    resize: tuple = None  # (height, width) the images are resized to before the crop, where the model needs one

    @property
    def channels(self):
        return CHANNEL_ORDERS[self.channel_order]

    def describe(self):
        """In words, as the user would pass it."""
        parts = [f"{self.channel_order} {self.input_size[0]}×{self.input_size[1]}"]
        if self.mean_value:
            parts.append("mean " + ",".join(f"{value:g}" for value in self.mean_value))
        if self.mean_file:
            parts.append(f"mean file {self.mean_file.name}")
        if self.scale is not None:
            parts.append(f"scale {self.scale:g}")
        if self.resize:
            parts.append(f"resize {self.resize[0]}×{self.resize[1]}")
        return ", ".join(parts)


@dataclass(frozen=True)
class ZooModel:
    """One catalogue entry."""

    name: str
    task: str
    licence: str
    net: Remote
    weights: Remote
    preprocessing: Preprocessing
    class_names: object = None  # a Remote, a tuple of names, or None
    homepage: str = None
    note: str = None
    size_mib: float = None  # the weights' size as published, where their exact size is unknown
    catalog: Path = None  # the file the entry comes from

    def remotes(self):
        """{role: Remote} of the files to download, in ``ROLES`` order."""
        found = {"net": self.net, "weights": self.weights, "mean_file": self.preprocessing.mean_file,
                 "class_names": self.class_names if isinstance(self.class_names, Remote) else None}
        return {role: remote for role, remote in found.items() if remote is not None}

    def to_json(self):
        """The entry as the manifest of a run records it."""
        record = {"name": self.name, "catalog": str(self.catalog), "task": self.task, "licence": self.licence}
        for role, remote in self.remotes().items():
            record[role] = {key: value for key, value in vars(remote).items() if value is not None}
        return record


@dataclass(frozen=True)
class FetchedModel:
    """A zoo model's files on disk, each verified."""

    model: ZooModel
    folder: Path
    files: dict  # {role: Fetched}

    def path(self, role):
        fetched = self.files.get(role)
        return fetched.path if fetched else None

    @property
    def net(self):
        return self.path("net")

    @property
    def weights(self):
        return self.path("weights")

    @property
    def mean_file(self):
        return self.path("mean_file")

    @property
    def class_names(self):
        return self.path("class_names")


class Catalog:
    """The models of the built-in catalogue and of the added ones, by name."""

    def __init__(self, models, files):
        self.models = models
        self.files = files

    def __iter__(self):
        return iter(self.models.values())

    def __len__(self):
        return len(self.models)

    def find(self, name):
        """The model called ``name``; an unknown name is a one-line error with the closest ones."""
        if name in self.models:
            return self.models[name]
        close = difflib.get_close_matches(name, self.models, n=3, cutoff=0.5)
        close += [known for known in self.models if name.lower() in known.lower() and known not in close]
        hint = did_you_mean(close[:3])
        raise CaffegenError(f"no model '{name}' in the zoo{hint}; 'caffegen zoo list' shows them, and --catalog FILE "
                            f"or ${CATALOG_VARIABLE} adds a team's own")

    def with_net(self, net_path):
        """The models whose deploy net is ``net_path``, byte for byte (by its SHA-1)."""
        digest = file_digest(net_path, "sha1")
        return [model for model in self if model.net.sha1 and model.net.sha1.lower() == digest]


def load_catalog(extra=(), environ=None):
    """The built-in catalogue with the entries of ``$CAFFEGEN_ZOO_CATALOG`` and of the files ``extra``."""
    environ = os.environ if environ is None else environ
    paths = [resource_dir("models") / BUILT_IN]
    paths += [Path(path) for path in (environ.get(CATALOG_VARIABLE) or "").split(os.pathsep) if path]
    paths += [Path(path) for path in extra]
    models, files = {}, []
    for path in paths:
        if any(path.resolve() == seen.resolve() for seen in files):
            continue
        files.append(path)
        for model in read_catalog(path):
            if model.name in models:
                raise CaffegenError(f"entry '{model.name}': already in {models[model.name].catalog}; give it "
                                    "another name", path)
            models[model.name] = model
    return Catalog(models, files)


def read_catalog(path):
    """The entries of one catalogue file; a malformed one is a one-line error naming the file and the entry."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CaffegenError(f"no such catalogue file (from --catalog or ${CATALOG_VARIABLE})", path) from None
    except json.JSONDecodeError as error:
        raise CaffegenError(f"not a JSON catalogue: {error.msg}", path, error.lineno, error.colno) from None
    except (OSError, UnicodeDecodeError) as error:
        raise CaffegenError(f"unreadable catalogue: {error}", path) from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise CaffegenError('not a caffegen zoo catalogue: expected {"caffegen_zoo": 1, "models": {NAME: {…}}}', path)
    if data.get("caffegen_zoo") != FORMAT:
        raise CaffegenError(f"catalogue format {data.get('caffegen_zoo')!r} is not {FORMAT}: expected "
                            f'"caffegen_zoo": {FORMAT}', path)
    return [_entry(name, entry, path) for name, entry in data["models"].items()]


def _entry(name, entry, path):
    def fail(problem):
        raise CaffegenError(f"entry {name!r}: {problem}", path)

    if not NAME.fullmatch(name):
        fail("a model's name takes letters, digits, '.', '_' and '-' (it names a folder)")
    if not isinstance(entry, dict):
        fail("expected an object with task, licence, net, weights and preprocessing")
    _known_keys(entry, ENTRY_KEYS, "", fail)
    for key in ("task", "licence"):
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            fail(f"'{key}' is missing (a short text)")
    net, weights = _remote(entry.get("net"), "net", fail), _remote(entry.get("weights"), "weights", fail)
    model = ZooModel(name=name, task=entry["task"], licence=entry["licence"], net=net, weights=weights,
                     preprocessing=_preprocessing(entry.get("preprocessing"), fail),
                     class_names=_class_names(entry.get("class_names"), fail), homepage=entry.get("homepage"),
                     note=entry.get("note"), size_mib=entry["weights"].get("size_mib"), catalog=path)
    names = [remote.name for remote in model.remotes().values()]
    if isinstance(model.class_names, tuple):
        names.append(INLINE_NAMES)
    if len(set(names)) != len(names):
        fail(f"two files share a name ({', '.join(names)}): give one a 'name'")
    return model


def _known_keys(data, known, where, fail):
    unknown = sorted(set(data) - known)
    if unknown:
        fail(f"{where}unknown key '{unknown[0]}' (expected {', '.join(sorted(known))})")


def _remote(data, role, fail):
    if not isinstance(data, dict) or not isinstance(data.get("url"), str):
        fail(f"'{role}' needs an object with a 'url'")
    _known_keys(data, FILE_KEYS, f"{role}: ", fail)
    url = data["url"]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "file") or not parts.path:
        fail(f"{role}: url '{url}' is not an http(s) or file URL")
    name = data.get("name") or unquote(parts.path.rsplit("/", 1)[-1])
    if not NAME.fullmatch(name) or name.endswith(PART):
        fail(f"{role}: {name!r} is no plain file name: give a 'name'")
    for algorithm, length in (("sha1", (40,)), ("sha256", range(8, 65))):
        value = data.get(algorithm)
        if value is not None and not (isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]+", value)
                                      and len(value) in length):
            fail(f"{role}: {algorithm} '{value}' is not a hex digest" +
                 (" of 40 digits" if algorithm == "sha1" else " (or a published prefix of 8 digits or more)"))
    for key in ("size", "size_mib"):
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0
                                  or (key == "size" and not isinstance(value, int))):
            fail(f"{role}: {key} must be a positive " + ("integer (bytes)" if key == "size" else "number"))
    return Remote(url, name, data.get("sha1"), data.get("sha256"), data.get("size"), data.get("checksum_from"))


def _preprocessing(data, fail):
    if not isinstance(data, dict):
        fail("'preprocessing' needs an object with channel_order and input_size")
    _known_keys(data, PREPROCESSING_KEYS, "preprocessing: ", fail)
    if data.get("channel_order") not in CHANNEL_ORDERS:
        fail(f"preprocessing: channel_order must be {' or '.join(CHANNEL_ORDERS)} (Caffe decodes images as BGR)")
    if data.get("mean_value") and data.get("mean_file"):
        fail("preprocessing: give mean_value or mean_file, not both")
    mean_value = _numbers(data.get("mean_value", []), "mean_value", (0, 1, 3), fail)
    scale = data.get("scale")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0):
        fail("preprocessing: scale must be a positive number")
    mean_file = _remote(data["mean_file"], "preprocessing: mean_file", fail) if "mean_file" in data else None
    return Preprocessing(data["channel_order"], _size(data.get("input_size"), "input_size", fail), mean_value,
                         mean_file, scale, _size(data["resize"], "resize", fail) if "resize" in data else None)


def _size(value, key, fail):
    numbers = _numbers(value, key, (2,), fail)
    if not all(isinstance(number, int) and number > 0 for number in numbers):
        fail(f"preprocessing: {key} must be [height, width], positive integers")
    return numbers


def _numbers(value, key, counts, fail):
    if not isinstance(value, list) or len(value) not in counts or not all(
            isinstance(number, (int, float)) and not isinstance(number, bool) for number in value):
        fail(f"preprocessing: {key} must be a list of " + " or ".join(str(count) for count in counts if count)
             + " numbers")
    return tuple(value)


def _class_names(data, fail):
    if data is None:
        return None
    if isinstance(data, list):
        if not data or not all(isinstance(name, str) and name.strip() and "\n" not in name for name in data):
            fail("class_names: expected a list of one-line names, or an object with a 'url'")
        return tuple(data)
    return _remote(data, "class_names", fail)


def model_folder(model, home=None):
    """Where the files of ``model`` are kept."""
    return (Path(home) if home else cache_home()) / "zoo" / model.name


def fetch_model(model, home=None, mirror=None, offline=False, reporter=None, roles=ROLES, environ=None):
    """Download what of ``model`` is missing (from ``mirror`` if given, else ``$CAFFEGEN_ZOO_MIRROR`` or its
    own URLs) and verify what is there; return where each file is."""
    environ = os.environ if environ is None else environ
    mirror = mirror or environ.get(MIRROR_VARIABLE) or None
    folder = model_folder(model, home or cache_home(environ))
    files = {}
    for role, remote in model.remotes().items():
        if role in roles:
            url = mirror_url(mirror, model.name, remote.name) if mirror else None
            files[role] = fetch(remote, folder, url, offline=offline, reporter=reporter)
    if isinstance(model.class_names, tuple) and "class_names" in roles:
        path = folder / INLINE_NAMES
        text = "".join(f"{name}\n" for name in model.class_names)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            folder.mkdir(parents=True, exist_ok=True)
            write_atomic(path, text)
        files["class_names"] = Fetched(path, False)
    return FetchedModel(model, folder, files)


@dataclass(frozen=True)
class ModelState:
    """What of a model is on disk, without verifying it (that is for fetch_model)."""

    present: int
    total: int
    bytes: int  # of the files present
    partial: bool  # an interrupted download waits to be resumed

    @property
    def words(self):
        if self.present == self.total:
            return "yes"
        if self.present == 0 and not self.partial:
            return "no"
        return f"partly ({self.present} of {self.total} files{', resumable' if self.partial else ''})"


def model_state(model, home=None):
    """What of ``model`` is in its folder."""
    folder = model_folder(model, home)
    paths = [folder / remote.name for remote in model.remotes().values()]
    present = [path for path in paths if path.is_file()]
    return ModelState(len(present), len(paths), sum(path.stat().st_size for path in present),
                      any(part_path(path).is_file() for path in paths))


def read_class_names(path):
    """The class names of a names file, one a line (quotes around a line, as some publish them, dropped)."""
    names = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if len(line) >= 2 and line[0] == line[-1] and line[0] in "'\"":
            line = line[1:-1]
        if line:
            names.append(line)
    return names
