"""Former names that keep working for a release, with a DeprecationWarning.

`renamed_argument(old, new)` decorates a function, or a class (usually a
frozen dataclass): callers passing the keyword `old` get `new` and a
warning; on a class, reading the attribute `old` returns `new` and warns
too. Passing both names is an error. The cost on calls that use the new
name is one dictionary lookup.
"""

import functools
import inspect
import warnings


def _accepting(function, old: str, new: str, owner: str):
  signature = inspect.signature(function)

  @functools.wraps(function)
  def wrapper(*args, **kwargs):
    if old in kwargs:
      value = kwargs.pop(old)
      if new in signature.bind_partial(*args, **kwargs).arguments:
        raise TypeError(f"{owner}: pass {new}= only ({old}= is its "
                        "deprecated former name)")
      warnings.warn(f"{owner}({old}=...) is deprecated: use {new}=",
                    DeprecationWarning, stacklevel=2)
      kwargs[new] = value
    return function(*args, **kwargs)
  return wrapper


def renamed_argument(old: str, new: str):
  """Decorator: keyword `old` (and, on a class, attribute `old`) still work
  as `new`, with a DeprecationWarning naming `new`."""

  def decorate(target):
    if not isinstance(target, type):
      return _accepting(target, old, new, target.__qualname__)

    def read(self):
      warnings.warn(f"{target.__qualname__}.{old} is deprecated: use .{new}",
                    DeprecationWarning, stacklevel=2)
      return getattr(self, new)

    # Instances keep only the new name: dataclass fields(), replace(),
    # equality and pickling see `new` alone.
    target.__init__ = _accepting(target.__init__, old, new,
                                 target.__qualname__)
    setattr(target, old, property(read, doc=f"Deprecated: use `{new}`."))
    return target
  return decorate
