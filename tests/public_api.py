"""The public names of a jax_irl module, as the API reference and the docstring checks count them."""

import importlib
import inspect


def public_names(module_name):
    """``module.name`` for each name of the module's ``__all__``, or, without one, for each function and class it
    defines whose name has no leading underscore."""
    mod = importlib.import_module(module_name)
    names = getattr(mod, "__all__", None)
    if names is None:
        names = [n for n, v in vars(mod).items() if not n.startswith("_") and getattr(v, "__module__", None) ==
                 module_name and (inspect.isfunction(v) or inspect.isclass(v))]
    return [f"{module_name}.{n}" for n in names]
