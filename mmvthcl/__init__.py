"""mmvthcl: VTHCL self-supervised video pretraining for MMAction2.

Importing the package registers every mmvthcl class into MMAction2's
registries; configs do it with
``custom_imports = dict(imports=['mmvthcl'], allow_failed_imports=False)``.
"""
from . import compat

# before anything below imports mmaction.models
compat.apply()

from .datasets import *  # noqa: E402,F401,F403
from .engine import *  # noqa: E402,F401,F403
from .evaluation import *  # noqa: E402,F401,F403
from .models import *  # noqa: E402,F401,F403
from .version import __version__  # noqa: E402,F401
from .visualization import *  # noqa: E402,F401,F403
