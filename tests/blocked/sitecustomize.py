"""With this folder on PYTHONPATH, the top-level modules named in IND_KNN_AD_BLOCKED
(comma-separated) cannot be imported, as in an install without them: a `None` in
sys.modules makes `import` raise ModuleNotFoundError and `importlib.util.find_spec`
return None. Tests use it for the scoring-only install and for a system without
Unix-only modules, without building a venv."""

import os
import sys

for _name in filter(None, os.environ.get("IND_KNN_AD_BLOCKED", "").split(",")):
    sys.modules[_name] = None
