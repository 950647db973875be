"""Checking a recipe's keyword arguments against the class or function they are for.

One mechanism serves optimizers, schedules, init schemes, activations and architectures:

1. :func:`check_types`: each value against the parameter's annotation (a number, an integer,
   true/false, a string, a list of numbers, ...); numbers must be finite.
2. :func:`call_checked`: build the thing once (on a dummy parameter, a dummy weight) so it
   applies its own range checks now, at parse time, instead of at the first step. When it
   refuses (``ValueError``, ``TypeError``, ...), the argument at fault is the one whose removal
   makes the call succeed; the error names that key, its value, the callee's reason and its
   default. An error that no argument of the user's explains is not bad input and propagates.

Range rules the callee does not check itself (a negative ``gamma`` gives a negative lr) are
raised as :class:`ConfigError` from the callee (trainkit's own factories), so they go through
the same path.
"""

from __future__ import annotations

import collections.abc
import inspect
import math
import types
import typing
from typing import Any, Callable, Mapping

from trainkit.errors import ConfigError

# what a callee raises for values it refuses (torch: ValueError/RuntimeError; comparisons of
# wrong types: TypeError; some libraries assert)
REFUSALS = (ValueError, TypeError, RuntimeError, AssertionError, ZeroDivisionError, OverflowError, IndexError, KeyError)


def _hints(fn: Callable[..., Any] | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(fn, Mapping):  # the annotations themselves, for a spec that is not a signature
        return dict(fn)
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        return typing.get_type_hints(target)
    except Exception:  # noqa: BLE001  (unresolvable annotations: no type check, the call still checks)
        return {}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def conforms(value: Any, tp: Any) -> bool:
    """Whether ``value`` (as YAML gives it) fits annotation ``tp``; unknown annotations fit.

    >>> conforms(0.9, float), conforms("abc", float), conforms([0.9, 0.99], tuple[float, float]), conforms(5, list[float])
    (True, False, True, False)
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or isinstance(tp, (str, typing.TypeVar)):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return _is_number(value)
    if tp is str:
        return isinstance(value, str)
    if origin is typing.Literal:
        return value in args
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return all(conforms(v, args[0]) for v in value) if args else True
        return len(value) == len(args) and all(conforms(v, a) for v, a in zip(value, args))
    if origin in (list, collections.abc.Sequence, collections.abc.Iterable) or tp in (list,):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            return False
        return all(conforms(v, args[0]) for v in value) if args else True
    if origin in (dict, collections.abc.Mapping) or tp is dict:
        return isinstance(value, dict)
    return True  # a class trainkit does not know how to check: the call will


def describe(tp: Any) -> str:
    """What a value of annotation ``tp`` looks like, in words.

    >>> describe(float | None), describe(tuple[float, float])
    ('a number or null', 'a list of 2 numbers')
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(describe(a) for a in args))
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if tp in names:
        return names[tp]
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        inner = {describe(a) for a in args}
        return f"a list of {len(args)} " + ("numbers" if inner == {"a number"} else "values")
    if origin in (tuple, list, collections.abc.Sequence, collections.abc.Iterable):
        return "a list of " + ("numbers" if args and describe(args[0]) == "a number" else "values")
    if origin in (dict, collections.abc.Mapping):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _finite(value: Any) -> bool:
    if _is_number(value):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    return True


def check_types(fn: Callable[..., Any] | Mapping[str, Any], kwargs: Mapping[str, Any], key: str) -> None:
    """Raise a :class:`ConfigError` naming ``key.<arg>`` for a value that does not fit ``fn``'s
    annotation of it (or ``fn[arg]`` when ``fn`` is a mapping of annotations), or a number that
    is NaN or infinite."""
    hints = _hints(fn)
    for name, value in kwargs.items():
        tp = hints.get(name)
        if tp is not None and not conforms(value, tp):
            raise ConfigError(f"must be {describe(tp)}, got {value!r}", f"{key}.{name}")
        if not _finite(value):
            raise ConfigError(f"must be a finite number, got {value!r}", f"{key}.{name}")


def _default(fn: Callable[..., Any], name: str) -> str:
    try:
        param = inspect.signature(fn).parameters.get(name)
    except (TypeError, ValueError):
        return ""
    if param is None or param.default is inspect.Parameter.empty:
        return ""
    return f"; default {param.default!r}"


def call_checked(
    fn: Callable[..., Any],
    kwargs: Mapping[str, Any],
    key: str,
    what: str,
    *,
    args: tuple[Any, ...] = (),
    fixed: Mapping[str, Any] | None = None,
    hints: Mapping[str, str] | None = None,
    call: Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any] | None = None,
) -> Any:
    """``fn(*args, **fixed, **kwargs)`` with its refusals turned into a :class:`ConfigError`.

    Args:
        fn: the class or function (its signature gives the defaults named in messages).
        kwargs: the user's arguments (the ones that can be at fault).
        key: the recipe key of the spec (``model.optimizer``); the culprit is ``key.<arg>``.
        what: how to name the callee (``optimizer 'sgd'``).
        args, fixed: arguments trainkit supplies (a dummy parameter, a dummy weight).
        hints: what is valid per argument name, for messages where the callee says only "invalid".
        call: how to exercise ``fn`` (default: call it), e.g. build an optimizer and take a step.

    Raises:
        ConfigError: an argument ``fn`` refuses, or a :class:`ConfigError` ``fn`` raised itself.
    """
    fixed = dict(fixed or {})
    run = call or (lambda f, a, kw: f(*a, **kw))

    def attempt(kw: Mapping[str, Any]) -> tuple[Any, BaseException | None]:
        try:
            return run(fn, args, {**fixed, **kw}), None
        except REFUSALS as e:  # ConfigError is a ValueError
            return None, e

    result, error = attempt(kwargs)
    if error is None:
        return result
    if isinstance(error, ConfigError):
        raise error.with_key(key) from None
    reason = str(error).strip().splitlines()[0].rstrip(".") if str(error).strip() else type(error).__name__
    # the culprit: the argument whose removal makes the call succeed, else the first whose
    # removal makes this error go away (another argument is refused next: nesterov needs momentum)
    without = {name: attempt({k: v for k, v in kwargs.items() if k != name})[1] for name in kwargs}
    culprit = next((n for n, e in without.items() if e is None), None) or next(
        (n for n, e in without.items() if str(e) != str(error)), None)
    if culprit is not None:
        valid = f"; valid: {hints[culprit]}" if hints and culprit in hints else ""
        raise ConfigError(
            f"{kwargs[culprit]!r} is refused by {what}: {reason}{valid}{_default(fn, culprit)}", f"{key}.{culprit}"
        ) from None
    if kwargs and attempt({})[1] is None:  # arguments that are fine alone but not together
        raise ConfigError(f"{what} refuses {dict(kwargs)!r}: {reason}", key) from None
    raise error
