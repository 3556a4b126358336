"""Per-layer learning rates: ``PATTERN=MULT`` rules on layer names, the most specific match winning.

A rule sets ``lr_mult`` on every learnable blob of the layers it matches; a bias blob gets twice
the multiplier, as in Caffe's reference models. Frozen layers stay frozen, and BatchNorm
statistics are never learned, so neither is touched.
"""

from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from caffegen.errors import CaffegenError
from caffegen.net.layers import BIAS_LR_FACTOR, bias_blob_index, is_frozen, learnable_blob_count


@dataclass
class RuleReport:
    """Which layers each rule set, and the patterns that matched nothing."""

    applied: dict = field(default_factory=dict)
    unused: list = field(default_factory=list)

    def summary(self):
        """One line per rule."""
        lines = [f"lr_mult {mult:g} (bias {mult * BIAS_LR_FACTOR:g}) on {len(names)} layer(s) matching '{pattern}'"
                 for (pattern, mult), names in self.applied.items() if names]
        lines += [f"no trainable layer matches '{pattern}'" for pattern in self.unused]
        return lines


def parse_lr_rules(settings):
    """``PATTERN=MULT`` strings as [(pattern, multiplier)]."""
    rules = []
    for setting in settings:
        pattern, sep, value = setting.rpartition("=")
        try:
            mult = float(value)
        except ValueError:
            mult = None
        if not sep or not pattern or mult is None or mult < 0:
            raise CaffegenError(f"--lr-mult expects PATTERN=MULT with MULT ≥ 0, got '{setting}'")
        rules.append((pattern, mult))
    return rules


def matching_rule(name, rules):
    """The matching rule whose pattern is the longest, counting literal characters first, or None."""
    matches = [rule for rule in rules if fnmatchcase(name, rule[0])]
    return max(matches, key=lambda rule: (_literal_length(rule[0]), len(rule[0]))) if matches else None


def _literal_length(pattern):
    return sum(1 for char in pattern if char not in "*?[]")


def apply_lr_rules(net, rules):
    """Set the learning-rate multipliers of ``net``'s trainable layers from ``rules``, in place."""
    report = RuleReport({rule: [] for rule in rules})
    for layer in net.layer:
        count = learnable_blob_count(layer)
        if not count or layer.type == "BatchNorm" or is_frozen(layer):
            continue
        rule = matching_rule(layer.name, rules)
        if rule is None:
            continue
        while len(layer.param) < count:
            layer.param.add()
        for index, spec in enumerate(layer.param[:count]):
            spec.lr_mult = rule[1] * (BIAS_LR_FACTOR if index == bias_blob_index(layer) else 1)
        if layer.name not in report.applied[rule]:
            report.applied[rule].append(layer.name)
    report.unused = [pattern for (pattern, _), names in report.applied.items() if not names]
    return report
