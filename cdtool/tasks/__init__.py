"""Task families, one module each; importing this package registers them (cdtool.engine.task.TASKS)."""

from cdtool.tasks import dense, patch  # noqa: F401
from cdtool.tasks import flow_change  # noqa: F401,E402
from cdtool.tasks import vae  # noqa: F401,E402  paper 000
from cdtool.tasks import oneclass  # noqa: F401,E402  one-class detectors (papers 003, 004)
