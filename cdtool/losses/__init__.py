"""Losses registered by name so recipes pick them; each takes the model's training outputs (a dict, see
`cdtool.losses.base`) and the batch, and returns the scalar loss and its named parts for logging."""

from cdtool.losses import dense, metric  # noqa: F401  (registers the losses)
from cdtool.losses import flow_change  # noqa: F401,E402
from cdtool.losses import vae  # noqa: F401,E402  paper 000
from cdtool.losses.base import create_loss, loss_entry, loss_names, register_loss  # noqa: F401
from cdtool.losses import oneclass  # noqa: F401,E402  one-class losses (papers 003, 004)
