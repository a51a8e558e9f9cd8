"""Methods. Importing this package registers every built-in method (see :mod:`core.models.registry`)."""
from core.models import early_fusion, late_fusion  # noqa: F401
from core.models.registry import get_method, list_methods, method_entry, register_method  # noqa: F401
