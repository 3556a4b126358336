"""A read-only view of a net in one phase: its layers in order and the blobs between them.

Blob names follow Caffe's sequential semantics: a layer's bottom refers to the most recent
earlier layer that wrote that name, so in-place layers (``bottom == top``) form chains.
Layers are found by name; where several share one (Caffe allows it), the name means the first,
as it does when Caffe copies weights, so a walk from a layer to its sources always moves up the net.
The layers in a view are the net's own messages: editing them edits the net.
"""

from difflib import get_close_matches

from caffegen.errors import CaffegenError, did_you_mean

TRAIN, TEST = "TRAIN", "TEST"
PHASE_NUMBERS = {TRAIN: 0, TEST: 1}  # caffe.Phase


class NetView:
    """The layers of ``net`` that Caffe instantiates in ``phase`` (with ``stages`` and ``level``)."""

    def __init__(self, net, phase=TRAIN, stages=(), level=0, path=None):
        self.net = net
        self.phase = phase
        self.path = path
        self.layers = [layer for layer in net.layer if layer_is_included(layer, phase, stages, level)]
        self.inputs = list(net.input) + [top for layer in self.layers if layer.type == "Input" for top in layer.top]
        self._index = {}
        for i, layer in enumerate(self.layers):
            self._index.setdefault(layer.name, i)
        self._sources = self._resolve_bottoms()

    def __contains__(self, name):
        return name in self._index

    def index(self, name):
        """Position of layer ``name`` in this phase; an unknown name is a user error with suggestions."""
        if name not in self._index:
            raise self._unknown_layer(name)
        return self._index[name]

    def layer(self, name):
        """The layer message called ``name``."""
        return self.layers[self.index(name)]

    def producers(self, blob):
        """Names of the layers that write ``blob``, in order (several when layers work in place)."""
        return [layer.name for layer in self.layers if blob in layer.top]

    def consumers(self, blob):
        """Names of the layers that read ``blob``, in order."""
        return [layer.name for layer in self.layers if blob in layer.bottom]

    def sources(self, name):
        """For each bottom of layer ``name``, the name of the layer that produced it (None: a net input)."""
        return list(self._sources[self.index(name)])

    def ancestors(self, name):
        """Names of every layer that layer ``name`` depends on through its bottoms."""
        seen, stack = set(), [name]
        while stack:
            for source in self.sources(stack.pop()):
                if source is not None and source not in seen:
                    seen.add(source)
                    stack.append(source)
        return seen

    def descendants(self, name):
        """Names of every layer that depends on layer ``name``."""
        found = set()
        for layer in self.layers[self.index(name) + 1:]:
            if any(source == name or source in found for source in self.sources(layer.name)):
                found.add(layer.name)
        return found

    def inplace_followers(self, name):
        """Layers that work in place on a top of layer ``name`` right after it (its BatchNorm, Scale, ReLU)."""
        start = self.index(name)
        tops = set(self.layers[start].top)
        followers = []
        for layer in self.layers[start + 1:]:
            in_place = len(layer.bottom) == 1 and list(layer.bottom) == list(layer.top) and layer.top[0] in tops
            if in_place:
                followers.append(layer.name)
            elif tops.intersection(layer.top):
                break
        return followers

    def unproduced_bottoms(self):
        """(layer name, blob) pairs for bottoms that no earlier layer or net input provides."""
        return [(layer.name, blob)
                for i, layer in enumerate(self.layers)
                for blob, source in zip(layer.bottom, self._sources[i])
                if source is None and blob not in self.inputs]

    def _resolve_bottoms(self):
        """For each layer, the writer of each bottom: the latest earlier layer with that top."""
        latest_writer, sources = {}, []
        for layer in self.layers:
            sources.append([latest_writer.get(blob) for blob in layer.bottom])
            latest_writer.update((blob, layer.name) for blob in layer.top)
        return sources

    def _unknown_layer(self, name):
        other = TEST if self.phase == TRAIN else TRAIN
        if any(layer.name == name for layer in self.net.layer if layer_is_included(layer, other)):
            return CaffegenError(f"layer '{name}' exists only in the {other} phase; "
                                 f"this works on the {self.phase} phase", self.path)
        hint = did_you_mean(get_close_matches(name, list(self._index), n=3))
        names = [layer.name for layer in self.layers]
        listing = ", ".join(names) if len(names) <= 12 else ", ".join(names[:6] + ["…"] + names[-5:])
        return CaffegenError(f"layer '{name}' not found{hint}; layers are: {listing}", self.path)


def layer_is_included(layer, phase, stages=(), level=0):
    """Caffe's phase filter: include rules must match one, exclude rules must match none."""
    if layer.include:
        return any(_rule_matches(rule, phase, stages, level) for rule in layer.include)
    return not any(_rule_matches(rule, phase, stages, level) for rule in layer.exclude)


def _rule_matches(rule, phase, stages, level):
    if rule.HasField("phase") and rule.phase != PHASE_NUMBERS[phase]:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    if any(stage not in stages for stage in rule.stage):
        return False
    return not any(stage in stages for stage in rule.not_stage)
