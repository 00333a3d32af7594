"""One way to refuse bad input: before any work starts, with a message that names the parameter, its value and
what to do.

Every boundary of the kit (the config dataclasses' `__post_init__`, `load_dataset` / `ImageData`, `Pipeline`,
`evaluate`, the cache readers and the command line) calls the checkers here, so a misconfigured run stops at once
instead of failing deep inside torch or, worse, reporting a number. Messages read
"<parameter> = <value>: <what is wrong>; <what to do>".

- `InputError(ValueError)`: a value the kit cannot use (so `except ValueError` keeps working);
  `CorruptFileError(InputError)`: a file on disk (cache, checkpoint) that cannot be read.
- `require(condition, parameter, value, problem, fix)`: the general check.
- Rules for `check_fields(owner, field=rule, ...)`: `integer(minimum)`, `number(above=..., at_least=...,
  at_most=...)`, `positive`, `non_negative`, `fraction()`, `choice(options)`, `boolean`, `text`, `radius`,
  `optional(rule)`.
- `pixels(name, x)`: a float image batch with every value in [0, 1].
- `items(name, value, kind, ...)`: a list of items of one type (models, numbers), enough of them;
  `record_list(name, value, ...)`: a list of records (dicts), enough of them, each holding the fields it needs.
- `check_adversarial(...)`: what `evaluate` checks after every attacked batch (what it checks before it starts is
  `cropkit.eval.inputs`).
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

Rule = Callable[[str, Any], None]
UNTRAINED = "0 epochs would cache the untrained model and return it as trained"
TOLERANCE = 1e-5  # slack of the eps-ball and [0, 1] checks on attack outputs (fp32 rounding)


class InputError(ValueError):
    """A value the kit cannot handle correctly; `parameter` and `value` are kept for programs that catch it."""

    def __init__(self, parameter: str, value: Any, problem: str, fix: str) -> None:
        self.parameter, self.value = parameter, value
        super().__init__(message(parameter, value, problem, fix))


class CorruptFileError(InputError):
    """A file the kit wrote earlier (a cache entry, a checkpoint) that can no longer be read."""


class AttackOutputError(RuntimeError):
    """An attack returned examples that must not be scored (non-finite, outside the eps-ball or [0, 1])."""


class Summary(str):
    """A description shown as it is in a message (not quoted), e.g. "labels in [0, 4]"."""

    def __repr__(self) -> str:
        return str(self)


def show(value: Any) -> str:
    """A one-line repr: arrays and tensors as dtype and shape, modules by class, long values (not strings) cut."""
    if isinstance(value, Tensor) or type(value).__name__ == "ndarray":
        return f"<{str(value.dtype).removeprefix('torch.')} {type(value).__name__} of shape {tuple(value.shape)}>"
    if isinstance(value, nn.Module):
        return f"<{type(value).__name__} module>"
    text = " ".join(repr(value).split())
    return text if len(text) <= 200 or isinstance(value, str) else text[:197] + "..."  # paths are never cut


def message(parameter: str, value: Any, problem: str, fix: str) -> str:
    """The kit's one error format: "<parameter> = <value>: <what is wrong>; <what to do>"."""
    return f"{parameter} = {show(value)}: {problem}; {fix}"


def require(condition: bool, parameter: str, value: Any, problem: str, fix: str) -> None:
    """Raise `InputError(parameter, value, problem, fix)` unless `condition` holds."""
    if not condition:
        raise InputError(parameter, value, problem, fix)


def _fraction_text(text: str) -> float | None:
    """The number a string such as "0.1" or "8/255" spells, else None."""
    match = re.fullmatch(r"\s*([-+]?[0-9.]+(?:e[-+]?\d+)?)\s*(?:/\s*([0-9.]+(?:e[-+]?\d+)?))?\s*", text, re.IGNORECASE)
    if match is None:
        return None
    try:
        numerator, denominator = float(match[1]), float(match[2] or 1)
        return numerator / denominator
    except (ValueError, ZeroDivisionError):
        return None


def parse_number_text(value: Any) -> Any:
    """At the command line only: a string that spells a number or a fraction ("8/255") becomes that float; lists
    and dicts are converted element by element; anything else is returned as it is."""
    if isinstance(value, str):
        parsed = _fraction_text(value) if "/" in value else None
        return parsed if parsed is not None else value
    if isinstance(value, list):
        return [parse_number_text(v) for v in value]
    if isinstance(value, dict):
        return {k: parse_number_text(v) for k, v in value.items()}
    return value


def _not_a_number(name: str, value: Any, wanted: str) -> InputError:
    if isinstance(value, str) and (parsed := _fraction_text(value)) is not None:
        return InputError(name, value, f"a string, not {wanted}", f"pass the number itself, {name.rsplit('.', 1)[-1]}="
                          f"{parsed:.6g}" + (f" (write {value.strip()} in Python)" if "/" in value else ""))
    return InputError(name, value, f"not {wanted}", f"pass {wanted}")


def integer(minimum: int = 1, maximum: int | None = None, why: str = "") -> Rule:
    """A whole number (an `int`, not a float or a bool) in [minimum, maximum]; `why` says what a smaller one does."""
    bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
    reason = f" ({why})" if why else ""

    def check(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
                raise InputError(name, value, "a float where a whole number is needed", f"pass the int {int(value)}")
            raise _not_a_number(name, value, f"a whole number {bounds}")
        require(minimum <= value and (maximum is None or value <= maximum), name, value,
                f"must be {bounds}{reason}", f"pass a whole number {bounds}")

    return check


def number(*, above: float | None = None, at_least: float | None = None, at_most: float | None = None,
           below: float | None = None, why: str = "") -> Rule:
    """A finite real number (not a string or a bool) within the given bounds."""
    low = f"({above:g}" if above is not None else f"[{at_least:g}" if at_least is not None else None
    high = f"{at_most:g}]" if at_most is not None else f"{below:g})" if below is not None else None
    if low and high:
        bounds = f"in {low}, {high}"
    else:
        bounds = (f"> {above:g}" if above is not None else f">= {at_least:g}" if at_least is not None
                  else f"<= {at_most:g}" if at_most is not None else f"< {below:g}" if below is not None else "")
    reason = f" ({why})" if why else ""

    def check(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise _not_a_number(name, value, "a number")
        v = float(value)
        require(math.isfinite(v), name, value, "not a finite number", f"pass a finite number {bounds}".rstrip())
        ok = ((above is None or v > above) and (at_least is None or v >= at_least)
              and (at_most is None or v <= at_most) and (below is None or v < below))
        require(ok, name, value, f"must be {bounds}{reason}", f"pass a number {bounds}")

    return check


positive = number(above=0)
non_negative = number(at_least=0)


def fraction(*, include_zero: bool = False, include_one: bool = True) -> Rule:
    """A number in (0, 1], [0, 1], (0, 1) or [0, 1)."""
    return number(above=None if include_zero else 0, at_least=0 if include_zero else None,
                  at_most=1 if include_one else None, below=None if include_one else 1)


def choice(options: Sequence[Any], what: str = "value") -> Rule:
    """One of `options`; the message says "Unknown <what>" and lists them."""
    def check(name: str, value: Any) -> None:
        require(value in options, name, value, f"Unknown {what}", f"choose one of {tuple(options)}")

    return check


def boolean(name: str, value: Any) -> None:
    """True or False (a string such as "no" would be truthy)."""
    require(isinstance(value, bool), name, value, "not a bool", "pass True or False")


def text(name: str, value: Any) -> None:
    """A non-empty string (a dataset name or path; a `Path` object would not hash into a cache key)."""
    require(isinstance(value, str) and value.strip() != "", name, value, "not a non-empty string",
            f"pass a string, e.g. {str(value)!r}" if isinstance(value, os.PathLike) else "pass a non-empty string")


def radius(name: str, value: Any) -> None:
    """An L-inf radius for images in [0, 1]: a float in [0, 1]. Strings are refused in Python (the command line
    converts "8/255" itself); 8 gets the hint 8/255."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _not_a_number(name, value, "a number")
    v = float(value)
    hint = f"did you mean {value}/255 = {v / 255:.4f}? " if 1 < v <= 255 else ""
    require(math.isfinite(v) and 0 <= v <= 1, name, value,
            "an L-inf radius must lie in [0, 1] for images in [0, 1]",
            f"{hint}pass a float in [0, 1], e.g. 8/255")


def optional(rule: Rule) -> Rule:
    """`rule`, or None."""
    def check(name: str, value: Any) -> None:
        if value is not None:
            rule(name, value)

    return check


def items(name: str, value: Any, kind: type | tuple[type, ...], what: str, fix: str, *, at_least: int = 1,
          where: Callable[[Any], bool] | None = None, counted: str | None = None,
          needs: Sequence[str] = ()) -> list[Any]:
    """`value` as a list: an iterable (not a single item, a string or a mapping) of `kind` items (each called a
    `what`), at least `at_least` of them passing `where` (all, without it; called `counted`), each of those holding
    the keys `needs`. Use the list returned: a generator is read here."""
    single = isinstance(value, (str, bytes, Mapping, kind))
    require(not single and isinstance(value, Iterable), name, value,
            f"a single {type(value).__name__}, not a list of {what}s" if single else f"not a list of {what}s", fix)
    listed = list(value)
    for i, item in enumerate(listed):
        require(isinstance(item, kind), f"{name}[{i}]", item, f"a {type(item).__name__}, not a {what}", fix)
    chosen = [(i, item) for i, item in enumerate(listed) if where is None or where(item)]
    counted = counted or what
    require(len(chosen) >= at_least, name, value, f"{len(chosen)} {counted}(s), fewer than {at_least}" if chosen
            else f"no {counted}s", fix)
    for i, item in chosen:
        missing = [key for key in needs if key not in item]
        require(not missing, f"{name}[{i}]", item, "lacks " + ", ".join(map(repr, missing)), fix)
    return listed


def record_list(name: str, value: Any, *, at_least: int = 1, where: Callable[[dict], bool] | None = None,
                counted: str | None = None, needs: Sequence[str] = (),
                fix: str = "pass a list of records (dicts), e.g. load_records(path) or run.written") -> list[dict]:
    """`items` for records: a list of dicts (at least `at_least`, of those passing `where`) holding `needs`."""
    return items(name, value, dict, "record", fix, at_least=at_least, where=where, counted=counted, needs=needs)


def check_fields(owner: object, **rules: Rule) -> None:
    """Check attributes of `owner` (a config dataclass, from its `__post_init__`); parameters are named
    `<Class>.<field>`."""
    for field, rule in rules.items():
        rule(f"{type(owner).__name__}.{field}", getattr(owner, field))


def pixels(name: str, x: Tensor) -> None:
    """`x` holds finite values in [0, 1] (one host synchronisation on a GPU)."""
    if x.numel() == 0:
        return
    low, high = torch.stack(torch.aminmax(x.detach().float())).tolist()
    if not (0 <= low and high <= 1):  # NaN fails both comparisons
        hint = "pixels look like [0, 255]: divide by 255; " if 1 < high <= 255 and low >= 0 else ""
        raise InputError(name, x, f"values span [{low:.4g}, {high:.4g}], outside [0, 1] (or not finite)",
                         f"{hint}the kit takes float images in [0, 1] (ImageData.tensors() gives them)")


def writable_file(name: str, path: str | os.PathLike[str]) -> None:
    """A path a file can be written at: not a folder, and not below a file."""
    target = Path(path).expanduser()
    require(not target.is_dir(), name, str(path), "is a folder, not a file", "pass a file path such as "
            f"{Path(path) / 'records.jsonl'}")
    parent = next((p for p in target.parents if p.exists()), None)
    require(parent is None or parent.is_dir(), name, str(path), f"{parent} is a file, so no folder can be made there",
            "pass a path inside a folder")


def check_adversarial(x_adv: Tensor, x: Tensor, eps: float, attack: str, norm: str = "Linf") -> None:
    """Refuse an attack's output unless it is finite, in the `norm` ball ("Linf" or "L2", per example) of radius
    `eps` around `x` and in [0, 1]; the clean images `x` must be in [0, 1] themselves. One host synchronisation per
    batch."""
    if x_adv.shape != x.shape:
        raise AttackOutputError(message("attack", attack, f"returned shape {tuple(x_adv.shape)} for inputs of "
                                        f"{tuple(x.shape)}", "check the attack's implementation"))
    if x.numel() == 0:
        return
    delta = (x_adv - x).flatten(1).float()
    far = delta.abs().amax() if norm == "Linf" else delta.norm(dim=1).amax()
    x_low, x_high, distance, low, high = torch.stack(
        [v.float() for v in (x.amin(), x.amax(), far, x_adv.amin(), x_adv.amax())]).tolist()
    if not (0 <= x_low and x_high <= 1):
        pixels("images", x)  # raises, naming the range
    if not all(map(math.isfinite, (distance, low, high))):  # NaN would pass every comparison below
        raise AttackOutputError(message("attack", attack, "returned non-finite (NaN or inf) examples, which must not "
                                        "be scored", "check its settings (step, eps) and that the model's input "
                                        "gradients are finite (cropkit.eval.audit.run)"))
    if distance > eps + TOLERANCE or low < -TOLERANCE or high > 1 + TOLERANCE:
        raise AttackOutputError(message("attack", attack, f"returned examples at {norm} distance {distance:.4g} "
                                        f"(eps = {eps:.4g}) with values in [{low:.4g}, {high:.4g}], outside the "
                                        "eps-ball or [0, 1]", "check the attack's eps and step settings"))
