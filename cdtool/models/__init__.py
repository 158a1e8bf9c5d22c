"""Change models, each registered by name (see registry). Importing this package registers them all."""

from cdtool.models import classical  # noqa: F401
from cdtool.models.registry import create_model, model_entry, model_names, register_model  # noqa: F401
from cdtool.models import cosimnet, diffunet, fcsiam, siamese_patch  # noqa: F401,E402
from cdtool.models import irmad, pca_kmeans  # noqa: F401,E402
from cdtool.models import simsac  # noqa: F401,E402
from cdtool.models import disentangled_vae  # noqa: F401,E402  paper 000
from cdtool.models import cae, dual_ae, rotnet_ae  # noqa: F401,E402  one-class detectors (papers 003, 004)
from cdtool.models import street  # noqa: F401,E402  irmad_local, the street-level default
from cdtool.models import pixel_classifier  # noqa: F401,E402  fitted on analyst polygons (cdtool.labels)
from cdtool.models import structure  # noqa: F401,E402  patch_structure, for dates from two sensors
