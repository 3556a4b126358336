"""A job's preprocessing and the zoo: a zoo model's own where the options give none, a warning where none is known."""

from dataclasses import replace

from caffegen.io.zoo import load_catalog
from caffegen.net.wiring import data_layers

USUAL = ("such models usually expect a mean subtracted from their BGR pixels: 104,117,123 for the BVLC models "
         "(--mean-value 104,117,123) or the mean file they were trained with (--mean-file X.binaryproto), and "
         "MobileNet also scales by 0.017 (--scale 0.017); --model NAME uses a zoo model with its own preprocessing")


def with_zoo_model(options, fetched):
    """``options`` on the zoo model ``fetched`` (a FetchedModel): its net and weights, and its mean, scale and
    resize where the options give none."""
    known = fetched.model.preprocessing
    settings = options.data_settings
    mean_given = bool(settings.mean_value) or options.mean_file is not None
    settings = replace(settings, mean_value=settings.mean_value if mean_given else known.mean_value,
                       scale=known.scale if settings.scale is None else settings.scale,
                       resize=settings.resize or known.resize)
    return replace(options, net=fetched.net, weights=fetched.weights, data_settings=settings,
                   mean_file=options.mean_file if mean_given else fetched.mean_file, zoo_model=fetched.model)


def preprocessing_warnings(options, net, catalog=None):
    """Why the images may reach the base ``net`` (as read, before wiring) wrongly prepared: nothing gives its mean.

    A net with data layers states its own preprocessing; a deploy-only one (an Input layer, as most
    published models come) does not. Its deploy net, when it is a zoo model's, names that model's.
    """
    settings = options.data_settings
    if options.keep_data_layers or options.zoo_model or settings.mean_value or options.mean_file or data_layers(net):
        return []
    scaled = f", scaled by {settings.scale:g}" if settings.scale is not None else ""
    start = (f"{options.net}: a deploy-only net, and no --mean-value, --mean-file or --model: its images are "
             f"fed as raw pixels 0-255{scaled}, nothing subtracted")
    known = (catalog or load_catalog()).with_net(options.net)
    if known:
        model = known[0]
        return [f"{start}, but it is the deploy net of the zoo's '{model.name}', which expects "
                f"{model.preprocessing.describe()}: pass --model {model.name}, or {_flags(model)}"]
    return [f"{start}; {USUAL}"]


def _flags(model):
    """The options that give ``model``'s preprocessing."""
    known = model.preprocessing
    flags = []
    if known.mean_value:
        flags.append("--mean-value " + ",".join(f"{value:g}" for value in known.mean_value))
    if known.mean_file:
        flags.append(f"--mean-file {known.mean_file.name} (caffegen zoo get {model.name})")
    if known.scale is not None:
        flags.append(f"--scale {known.scale:g}")
    if known.resize:
        flags.append(f"--resize {known.resize[0]},{known.resize[1]}")
    return " ".join(flags) or "nothing more: it expects no mean"
