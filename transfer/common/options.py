"""Typed options: one declaration per field, one validator for every options dataclass.

A field says, beside its default, what values are valid and, where it is worth tuning, the
distribution a hyperparameter sweep draws it from::

    @dataclass
    class DannOptions:
        adv_weight: float = opt(1.0, ge=0, search=LogUniform(0.1, 10))
        disc_hidden: int = opt(64, ge=1)

:func:`build` turns a dict (a recipe section, a corpus card's table, a strategy's or a
backbone's options) into such a dataclass: an unknown key, a value of the wrong type or out of
its declared range is an :class:`OptionError` (a :class:`transfer.UserError`: one line, no
traceback) naming the key and what is allowed. Cross-field rules (``split <= blocks``) live in
the dataclass's ``validate()`` method, which :func:`build` and :func:`check` call last.

Search spaces (:class:`LogUniform`, :class:`Uniform`, :class:`IntUniform`, :class:`Choice`)
draw values with a NumPy generator; :func:`search_space` lists a dataclass's declared ones and
:func:`parse_space` reads a recipe's narrowing or replacement of one.

Why one file (~540 lines): one mechanism (ranges, search spaces, type checks, the builder and
its error naming) that every options dataclass goes through; split, its parts would import each
other.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

import numpy as np

from transfer import UserError


class OptionError(UserError, ValueError):
    """An unknown option, a value of the wrong type, or one outside its declared range."""


# --- valid ranges -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bounds:
    """A numeric interval (each end optional, open or closed). NaN and infinities are never
    inside: every option is a finite number."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def contains(self, value: float) -> bool:
        """Whether ``value`` (finite) lies inside."""
        if not math.isfinite(value):
            return False
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    @property
    def low(self) -> float | None:
        """The lower end (``ge`` or ``gt``), or None when unbounded below."""
        return self.ge if self.ge is not None else self.gt

    @property
    def high(self) -> float | None:
        """The upper end (``le`` or ``lt``), or None when unbounded above."""
        return self.le if self.le is not None else self.lt

    def describe(self) -> str:
        """``> 0``, ``>= 1``, ``in [0, 1)``, ``<= 5``."""
        if self.low is not None and self.high is not None:
            return (f"in {'[' if self.ge is not None else '('}{self.low:g}, {self.high:g}"
                    f"{']' if self.le is not None else ')'}")
        if self.low is not None:
            return f"{'>=' if self.ge is not None else '>'} {self.low:g}"
        if self.high is not None:
            return f"{'<=' if self.le is not None else '<'} {self.high:g}"
        return "a finite number"


# --- search spaces ------------------------------------------------------------------------------
class Space:
    """A distribution a sweep draws one field's value from."""

    def sample(self, rng: np.random.Generator) -> Any:
        """One value."""
        raise NotImplementedError

    def describe(self) -> str:
        """How the distribution is written in a recipe."""
        raise NotImplementedError

    def values(self) -> list[Any]:
        """The values the space can give, for a range check (interval ends or choices)."""
        raise NotImplementedError


@dataclass(frozen=True)
class LogUniform(Space):
    """Log-uniform on [low, high] (learning rates, loss weights): as many draws per decade."""

    low: float
    high: float

    def sample(self, rng: np.random.Generator) -> float:
        """One draw: ``exp`` of a uniform draw between the logs of the ends."""
        return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))

    def describe(self) -> str:
        """``log_uniform = [low, high]``."""
        return f"log_uniform = [{self.low:g}, {self.high:g}]"

    def values(self) -> list[Any]:
        """The two ends, for the range check."""
        return [self.low, self.high]


@dataclass(frozen=True)
class Uniform(Space):
    """Uniform on [low, high] (dropout rates, shares)."""

    low: float
    high: float

    def sample(self, rng: np.random.Generator) -> float:
        """One uniform draw from [low, high)."""
        return float(rng.uniform(self.low, self.high))

    def describe(self) -> str:
        """``uniform = [low, high]``."""
        return f"uniform = [{self.low:g}, {self.high:g}]"

    def values(self) -> list[Any]:
        """The two ends, for the range check."""
        return [self.low, self.high]


@dataclass(frozen=True)
class IntUniform(Space):
    """Uniform over the integers low..high (both included)."""

    low: int
    high: int

    def sample(self, rng: np.random.Generator) -> int:
        """One integer from low..high, both included."""
        return int(rng.integers(self.low, self.high + 1))

    def describe(self) -> str:
        """``int_uniform = [low, high]``."""
        return f"int_uniform = [{self.low}, {self.high}]"

    def values(self) -> list[Any]:
        """The two ends, for the range check."""
        return [self.low, self.high]


@dataclass(frozen=True)
class Choice(Space):
    """One of a few values, equally likely."""

    options: tuple[Any, ...]

    def sample(self, rng: np.random.Generator) -> Any:
        """One of the options, each with probability 1 / len(options)."""
        return self.options[int(rng.integers(len(self.options)))]

    def describe(self) -> str:
        """``choice = [a, b, ...]``."""
        return f"choice = {list(self.options)!r}"

    def values(self) -> list[Any]:
        """Every option, for the range check."""
        return list(self.options)


SPACE_KINDS: dict[str, type[Space]] = {"log_uniform": LogUniform, "uniform": Uniform,
                                       "int_uniform": IntUniform, "choice": Choice}


# --- declaring a field --------------------------------------------------------------------------
_META = "ser_transfer"


@dataclass(frozen=True)
class FieldInfo:
    """What :func:`opt` declares about a field beside its type and default.

    ``bounds`` applies to a number, or to every number of a list; ``hint`` is added to an
    out-of-range message (why the range, what to use instead); ``search`` is the sweep's
    default distribution (None: not tuned unless a recipe gives one); ``per_run``: draws that
    differ only in per-run fields train in one pack (the field's value is a per-run tensor
    there); None means "a float is, anything else is not".
    """

    bounds: Bounds = Bounds()
    hint: str = ""
    search: Space | None = None
    per_run: bool | None = None
    length: int | None = None


def opt(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
        le: float | None = None, lt: float | None = None, hint: str = "",
        search: Space | None = None, per_run: bool | None = None, length: int | None = None,
        factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its valid range and search space (see :class:`FieldInfo`).

    Args:
        default: the default value (or ``factory`` for a list or dict).
        ge, gt, le, lt: the valid range (>=, >, <=, <), for numbers and lists of numbers.
        hint: added to the error of an out-of-range value.
        search: the distribution a sweep draws the field from by default.
        per_run: whether differing values may share a pack (default: floats do).
        length: a list's required length.
    """
    info = FieldInfo(Bounds(ge, gt, le, lt), hint, search, per_run, length)
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata={_META: info})
    return dataclasses.field(default=default, metadata={_META: info})


def field_info(f: dataclasses.Field) -> FieldInfo:
    """The declaration of a field (a plain field declares nothing)."""
    return f.metadata.get(_META, FieldInfo())


def is_per_run(cls: type, name: str) -> bool:
    """Whether draws that differ in ``cls.name`` can train in one pack."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    info = field_info(f)
    if info.per_run is not None:
        return info.per_run
    return typing.get_type_hints(cls)[name] is float


def search_space(cls: type) -> dict[str, Space]:
    """The fields of ``cls`` with a declared search space, in field order."""
    return {f.name: field_info(f).search for f in dataclasses.fields(cls)
            if field_info(f).search is not None}


# --- types --------------------------------------------------------------------------------------
def type_ok(value: Any, hint: Any) -> bool:
    """Whether ``value`` (as read from TOML) fits the type ``hint``."""
    if hint is Any:
        return True
    check = _BY_ORIGIN.get(typing.get_origin(hint))
    return check(value, hint) if check else _plain_ok(value, hint)


def _literal_ok(value: Any, hint: Any) -> bool:
    return any(value == a and type(value) is type(a) for a in typing.get_args(hint))


def _union_ok(value: Any, hint: Any) -> bool:
    return any(type_ok(value, h) for h in typing.get_args(hint))


def _sequence_ok(value: Any, hint: Any) -> bool:
    args = [a for a in typing.get_args(hint) if a is not Ellipsis] or [Any]
    return isinstance(value, (list, tuple)) and all(type_ok(v, args[0]) for v in value)


def _dict_ok(value: Any, hint: Any) -> bool:
    _, inner = typing.get_args(hint) or (str, Any)
    return (isinstance(value, dict) and all(isinstance(k, str) for k in value)
            and all(type_ok(v, inner) for v in value.values()))


def _plain_ok(value: Any, hint: Any) -> bool:
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    return isinstance(value, hint)


_BY_ORIGIN = {typing.Literal: _literal_ok, typing.Union: _union_ok, types.UnionType: _union_ok,
              list: _sequence_ok, tuple: _sequence_ok, dict: _dict_ok}


def describe(hint: Any) -> str:
    """A type in words: ``float``, ``one of 'mul', 'add'``, ``a list of int``."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):  # None is given by leaving the key out
        return " or ".join(describe(h) for h in typing.get_args(hint) if h is not type(None))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return "a list of " + (" or ".join(_PLURAL.get(h, describe(h)) for h in args)
                               if args else "values")
    if origin is dict:
        _, inner = typing.get_args(hint) or (str, Any)
        return f"a table of {_PLURAL.get(inner, describe(inner))}"
    return _WORDS.get(hint, getattr(hint, "__name__", str(hint)))


_PLURAL = {float: "numbers", int: "integers", str: "strings"}
_WORDS = {Any: "any value", float: "a number", int: "an integer", str: "a string",
          bool: "true or false", type(None): "none"}


def _convert(value: Any, hint: Any) -> Any:
    """TOML value -> the field's Python value (int -> float for floats, lists -> tuples)."""
    origin = typing.get_origin(hint)
    if hint is float and isinstance(value, int):
        return float(value)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if float in args and isinstance(value, int) and not isinstance(value, bool) \
                and int not in args:
            return float(value)
        return value
    if origin is tuple:
        (inner, *_) = typing.get_args(hint) or (Any,)
        return tuple(_convert(v, inner) for v in value)
    if origin is list:
        (inner,) = typing.get_args(hint) or (Any,)
        return [_convert(v, inner) for v in value]
    return value


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return []


# --- naming keys in errors ----------------------------------------------------------------------
@dataclass(frozen=True)
class Naming:
    """How errors name a key: ``recipe key 'train.lr'``, ``strategy 'dann': option 'mu'`` or
    ``card x.toml [audio]: 'glob'``.

    Args:
        owner: what the options belong to (``strategy 'dann'``), or "" for recipe keys.
        prefix: the dotted path of the table (recipe keys), "" at the top.
        noun: what a key is called after an owner (``option``; ``key`` for corpus cards).
    """

    owner: str = ""
    prefix: str = ""
    noun: str = "option"

    def key(self, name: str) -> str:
        """How an error names key ``name``: ``strategy 'dann': option 'mu'`` or
        ``recipe key 'train.lr'``."""
        if self.owner:
            return f"{self.owner}: {'option ' if self.noun == 'option' else ''}{name!r}"
        return f"recipe key '{self.prefix + '.' if self.prefix else ''}{name}'"

    def child(self, name: str) -> Naming:
        """The naming of the nested table ``name`` (its dotted path extended)."""
        return Naming(self.owner, f"{self.prefix}.{name}" if self.prefix else name, self.noun)

    def unknown(self, unknown: list[str], allowed: list[str]) -> str:
        """The one-line error for unknown keys: an owner's lists all of them, a recipe's
        names the first one and the table it is in; both list the allowed keys."""
        if self.owner:
            return f"{self.owner}: unknown {self.noun}(s) {unknown}; allowed: {allowed}"
        where = f"[{self.prefix}]" if self.prefix else "the top level"
        key = f"{self.prefix}.{unknown[0]}" if self.prefix else unknown[0]
        return f"unknown recipe key '{key}' in {where}; allowed: {', '.join(allowed)}"


class FieldError(Exception):
    """Raised by an options dataclass's ``validate()`` for a rule that involves other fields:
    ``FieldError("folds", "must be >= 2, got 1")``; :func:`build` names the key as it names
    every other."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


_COUNT = {2: "two", 3: "three"}


def check_value(value: Any, hint: Any, info: FieldInfo, key: str) -> Any:
    """Check one value against its type and declaration; return it converted. ``key`` is the
    key's name in errors (``recipe key 'train.lr'``)."""
    if not type_ok(value, hint):
        raise OptionError(f"{key} must be {describe(hint)}, got {value!r}")
    value = _convert(value, hint)
    is_list = isinstance(value, (list, tuple))
    bad_length = info.length is not None and is_list and len(value) != info.length
    if bad_length or any(not info.bounds.contains(v) for v in _numbers(value)):
        rule = info.bounds.describe()
        if is_list:
            n = _COUNT.get(info.length, str(info.length)) if info.length else "a list of"
            rule = f"{n} numbers {rule}" if rule != "a finite number" else f"{n} finite numbers"
        raise OptionError(f"{key} must be {rule}, got {value!r}"
                          + (f"; {info.hint}" if info.hint else ""))
    return value


def build(cls: type, data: Any, naming: Naming | str = "", *,
          skip: frozenset[str] = frozenset()) -> Any:
    """Build the dataclass ``cls`` from ``data`` (a dict as read from TOML), checking every key.

    Nested dataclass fields are built from nested tables. ``naming`` says how errors name a
    key (a string is the owner: ``"strategy 'dann'"``). Keys in ``skip`` are left to the
    caller (not checked, not passed).
    """
    naming = Naming(naming) if isinstance(naming, str) else naming
    if not isinstance(data, dict):
        where = naming.owner or (f"recipe key '{naming.prefix}'" if naming.prefix else "a recipe")
        raise OptionError(f"{where} must be a table, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields) - skip)
    if unknown:
        raise OptionError(naming.unknown(unknown, list(fields)))
    hints = typing.get_type_hints(cls)
    kwargs = {name: _field_value(value, hints[name], fields[name], naming.child(name),
                                 naming.key(name))
              for name, value in data.items() if name not in skip}
    try:
        obj = cls(**kwargs)
    except TypeError as err:  # a required field left out
        raise OptionError(f"{naming.owner or naming.prefix or 'recipe'}: {err}") from None
    _validate(obj, naming)
    return obj


def _field_value(value: Any, hint: Any, f: dataclasses.Field, child: Naming, key: str) -> Any:
    """One field's value checked: a nested table, a list of tables, a table of values (each
    named ``key.name``) or a plain value."""
    if dataclasses.is_dataclass(hint):
        return build(hint, value, child)
    if _is_dataclass_list(hint):
        (inner,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise OptionError(f"{key} must be a list of tables, got {value!r}")
        return [build(inner, v, Naming(child.owner, f"{child.prefix}[{i}]", child.noun))
                for i, v in enumerate(value)]
    if typing.get_origin(hint) is dict and isinstance(value, dict):
        _, inner = typing.get_args(hint)
        return {k: check_value(v, inner, field_info(f), _item_key(key, k)) for k, v in value.items()}
    return check_value(value, hint, field_info(f), key)


def _item_key(key: str, item: str) -> str:
    """``recipe key 'target.label_map'`` + ``a`` -> ``recipe key 'target.label_map.a'``."""
    return key[:-1] + f".{item}'" if key.endswith("'") else f"{key}.{item}"


def _is_dataclass_list(hint: Any) -> bool:
    args = typing.get_args(hint)
    return typing.get_origin(hint) is list and len(args) == 1 and dataclasses.is_dataclass(args[0])


def _validate(obj: Any, naming: Naming) -> None:
    validate = getattr(obj, "validate", None)
    if validate is None:
        return
    try:
        validate()
    except FieldError as err:
        raise OptionError(f"{naming.key(err.field)} {err.message}") from None
    except OptionError as err:
        if naming.owner and not str(err).startswith(naming.owner):
            raise OptionError(f"{naming.owner}: {err}") from None
        raise


def check(obj: Any, naming: Naming | str = "") -> Any:
    """Check an already built dataclass (its values set in code, or changed after building)
    against every declaration, nested dataclasses included; return it."""
    naming = Naming(naming) if isinstance(naming, str) else naming
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check(value, naming.child(f.name))
        elif isinstance(value, list) and value and all(dataclasses.is_dataclass(v) for v in value):
            for i, v in enumerate(value):
                check(v, naming.child(f"{f.name}[{i}]"))
        else:
            plain = list(value) if isinstance(value, tuple) else value
            check_value(plain, hints[f.name], field_info(f), naming.key(f.name))
    _validate(obj, naming)
    return obj


def replace(obj: Any, values: dict[str, Any], naming: Naming | str = "") -> Any:
    """A copy of the dataclass ``obj`` with ``values`` set, each checked like :func:`build`."""
    naming = Naming(naming) if isinstance(naming, str) else naming
    fields = {f.name: f for f in dataclasses.fields(obj)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise OptionError(naming.unknown(unknown, list(fields)))
    hints = typing.get_type_hints(type(obj))
    checked = {k: check_value(v, hints[k], field_info(fields[k]), naming.key(k))
               for k, v in values.items()}
    new = dataclasses.replace(obj, **checked)
    _validate(new, naming)
    return new


# --- recipe-given search spaces -----------------------------------------------------------------
def parse_space(cls: type, name: str, value: Any, key: str) -> Space | None:
    """A recipe's search space for field ``name`` of ``cls``: ``[low, high]`` narrows the
    declared distribution, ``{log_uniform = [a, b]}`` (uniform, int_uniform, choice) replaces
    it, ``false`` leaves the field at its value. Every value the space can give must be valid
    for the field."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if name not in fields:
        raise OptionError(f"{key}: {name!r} is not an option; allowed: {list(fields)}")
    info, hint = field_info(fields[name]), typing.get_type_hints(cls)[name]
    if value is False:
        return None
    space = _space_from(value, info.search, hint, key)
    for v in space.values():
        check_value(v, hint, info, f"{key} (a value of its space)")
    return space


_KINDS = ", ".join(f"{{{k} = [...]}}" for k in SPACE_KINDS)


def _space_from(value: Any, declared: Space | None, hint: Any, key: str) -> Space:
    if isinstance(value, list) and len(value) == 2 and all(_numbers([v]) for v in value):
        if declared is None or isinstance(declared, Choice):
            raise OptionError(f"{key}: [low, high] narrows a declared range, and this option "
                              f"declares none; give one of {_KINDS}")
        return _interval(type(declared), value, key)
    if not (isinstance(value, dict) and len(value) == 1 and next(iter(value)) in SPACE_KINDS):
        raise OptionError(f"{key} must be [low, high], false, or one of {_KINDS}; got {value!r}")
    return _replacement(*next(iter(value.items())), hint, key)


def _replacement(kind: str, args: Any, hint: Any, key: str) -> Space:
    """A space the recipe gives in place of the declared one: ``{kind = args}``."""
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise OptionError(f"{key}: choice needs a non-empty list, got {args!r}")
        return Choice(tuple(args))
    if typing.get_origin(hint) is typing.Literal or hint in (str, bool):
        raise OptionError(f"{key}: a {describe(hint)} option takes {{choice = [...]}}")
    if not (isinstance(args, list) and len(args) == 2 and len(_numbers(args)) == 2):
        raise OptionError(f"{key}: {kind} needs [low, high], got {args!r}")
    return _interval(SPACE_KINDS[kind], args, key)


def _interval(kind: type[Space], bounds: list[Any], key: str) -> Space:
    low, high = bounds
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise OptionError(f"{key}: the range [{low}, {high}] is empty")
    if kind is LogUniform and low <= 0:
        raise OptionError(f"{key}: a log-uniform range needs low > 0, got [{low}, {high}]")
    if kind is IntUniform:
        if not all(float(v).is_integer() for v in bounds):
            raise OptionError(f"{key}: int_uniform needs integer ends, got {bounds}")
        return IntUniform(int(low), int(high))
    return kind(float(low), float(high))
