"""The official X-Dim release's checkpoints: their key names and options, mapped onto ours by tables.

The authors' checkpoints pickle `opt` as an `argparse.Namespace` and store `model` as
a list of three state dicts (image encoder, text encoder, similarity) with `module.`
prefixes and their own key names. `OFFICIAL_KEYS` maps each official key onto ours
(docs/method.md lists the similarity's); `official_state_dict` applies it, checking
every key and shape. Their options map onto our configs through
lib.formats.checkpoint.OFFICIAL_OPTION_FIELDS.
"""
from lib.errors import XDimError
from lib.formats.checkpoint import LEGACY_BUFFERS

PART_NAMES = ("image encoder", "text encoder", "similarity")

# (part, official key) -> our key. Parts: 0 image encoder, 1 text encoder, 2 similarity.
OFFICIAL_KEYS = {
    (0, "fc.weight"): "img_enc.fc.weight",
    (0, "fc.bias"): "img_enc.fc.bias",
    (0, "mlp.layers.0.weight"): "img_enc.mlp_in.weight",
    (0, "mlp.layers.0.bias"): "img_enc.mlp_in.bias",
    (0, "mlp.bns.0.weight"): "img_enc.mlp_bn.weight",
    (0, "mlp.bns.0.bias"): "img_enc.mlp_bn.bias",
    (0, "mlp.bns.0.running_mean"): "img_enc.mlp_bn.running_mean",
    (0, "mlp.bns.0.running_var"): "img_enc.mlp_bn.running_var",
    (0, "mlp.bns.0.num_batches_tracked"): "img_enc.mlp_bn.num_batches_tracked",
    (0, "mlp.layers.1.weight"): "img_enc.mlp_out.weight",
    (0, "mlp.layers.1.bias"): "img_enc.mlp_out.bias",
    (1, "linear.weight"): "txt_enc.proj.weight",
    (1, "linear.bias"): "txt_enc.proj.bias",
    (2, "weights.weight"): "sim.E",
    (2, "sim_map.weight"): "sim.lam",
    (2, "temp_learnable.weight"): "sim.log_t_mask",
    (2, "temp_scale.weight"): "sim.log_t_attn",
}
# BERT's own keys keep their names under this prefix, and so do the raw-image mode's backbone
# (a torchvision-named ResNet) and its image encoder's FC.
OFFICIAL_PREFIXES = {(1, "bert."): "txt_enc.bert.", (0, "backbone.resnet."): "backbone.",
                     (0, "image_encoder.fc."): "img_enc.fc."}
# Entries the official model holds but never uses: BatchNorm after the MLP's last layer, sim_eval,
# the backbone's ImageNet classifier, and the backbone's second and third copies (`base` and `top`
# are nn.Sequential views of `resnet`'s modules, saved again under their own names).
OFFICIAL_UNUSED = ((0, "mlp.bns.1."), (2, "sim_eval.weight"), (0, "backbone.resnet.fc."),
                   (0, "backbone.base."), (0, "backbone.top."))


def official_state_dict(parts, expected, path="checkpoint"):
    """Map the official `model` list onto our flat key names.

    parts: the three official state dicts; expected: our state dict (name -> tensor),
    used for the key set and shapes. Returns our-named tensors; raises XDimError naming
    the first unknown, missing or mis-shaped key.
    """
    ours = {}
    for part, state in enumerate(parts):
        for official_key, tensor in state.items():
            key = official_key[len("module."):] if official_key.startswith("module.") else official_key
            if any(part == p and key.startswith(prefix) for p, prefix in OFFICIAL_UNUSED):
                continue
            name = _our_name(part, key)
            if name is None or (name not in expected and name not in LEGACY_BUFFERS):
                raise XDimError(f"{path}: unexpected key {official_key!r} in the official {PART_NAMES[part]}")
            if name in expected:
                ours[name] = _fit_shape(tensor, expected[name].shape, official_key, path)
    missing = [name for name in expected if name not in ours]
    if missing:
        raise XDimError(f"{path}: official checkpoint lacks {_official_name(missing[0])!r} (our {missing[0]!r})")
    return ours


def _our_name(part, key):
    if (part, key) in OFFICIAL_KEYS:
        return OFFICIAL_KEYS[(part, key)]
    for (p, prefix), target in OFFICIAL_PREFIXES.items():
        if p == part and key.startswith(prefix):
            return target + key[len(prefix):]
    return None


def _official_name(name):
    for (part, key), ours in OFFICIAL_KEYS.items():
        if ours == name:
            return f"model[{part}].module.{key}"
    for (part, prefix), target in OFFICIAL_PREFIXES.items():
        if name.startswith(target):
            return f"model[{part}].module.{prefix}{name[len(target):]}"
    return name


def _fit_shape(tensor, shape, official_key, path):
    """The official scalars and vectors carry leading singleton dims ((1, d), (1, 1)); drop them."""
    if tensor.shape == shape:
        return tensor
    leading = tensor.dim() - len(shape)
    if leading > 0 and tensor.shape[leading:] == shape and all(n == 1 for n in tensor.shape[:leading]):
        return tensor.reshape(shape)
    raise XDimError(f"{path}: key {official_key!r} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
