"""A griffe extension: the signatures users call, for attrs classes and private keywords.

griffe reads the source without importing it, so it does not know that
``@attrs.frozen`` / ``@attrs.define`` write an ``__init__`` from the class's
annotated fields: without help, ``gpupool.Resources`` or ``gpupool.GPUStats``
would render with no signature at all. This extension builds that
``__init__`` as attrs does: one parameter per annotated field in order
(inherited fields first), a field's ``default=`` or ``factory=``, the
decorator's and the field's ``kw_only``, ``init=False`` fields left out, and
the parameter named by ``alias=`` or else the field's name without its
leading underscores. Each field then renders with its default as its value
(not the ``attrs.field(...)`` call, whose converters are private functions).

It also drops parameters whose names start with an underscore from every
signature (``GPUResourcePool(_ledger_kind=...)``, a hook between gpupool's
own layers): they are not part of the public contract, as the leading
underscore says everywhere else.
"""

from __future__ import annotations

from typing import Any

import griffe

#: The decorators (by canonical path) that make a class an attrs class.
_ATTRS_DECORATORS = frozenset(
    {
        "attrs.define",
        "attrs.frozen",
        "attrs.mutable",
        "attr.s",
        "attr.attrs",
        "attr.define",
        "attr.frozen",
        "attr.mutable",
    }
)
_FIELD_FUNCTIONS = frozenset({"attrs.field", "attr.ib", "attr.attrib", "attr.field"})


def _call_arguments(expr: object) -> dict[str, object]:
    """The keyword arguments of a call expression, as expressions (or strings)."""
    if not isinstance(expr, griffe.ExprCall):
        return {}
    return {
        argument.name: argument.value
        for argument in expr.arguments
        if isinstance(argument, griffe.ExprKeyword)
    }


def _attrs_decorator(cls: griffe.Class) -> griffe.Decorator | None:
    for decorator in cls.decorators:
        value = decorator.value
        if isinstance(value, griffe.Expr) and value.canonical_path in _ATTRS_DECORATORS:
            return decorator
    return None


def _is_field(member: griffe.Object | griffe.Alias) -> bool:
    if member.is_alias or not member.is_attribute:
        return False
    assert isinstance(member, griffe.Attribute)
    if member.annotation is None or "property" in member.labels:
        return False
    # ClassVar annotations are unwrapped by griffe, which labels them class-only.
    return not ("class-attribute" in member.labels and "instance-attribute" not in member.labels)


def _fields(cls: griffe.Class, class_kw_only: bool) -> list[griffe.Parameter]:
    parameters = []
    for member in cls.members.values():
        if not _is_field(member):
            continue
        assert isinstance(member, griffe.Attribute)
        value = member.value
        is_field_call = (
            isinstance(value, griffe.ExprCall) and value.canonical_path in _FIELD_FUNCTIONS
        )
        options = _call_arguments(value) if is_field_call else {}
        if str(options.get("init", "True")) == "False":
            continue
        if "factory" in options:
            default: str | griffe.Expr | None = f"{options['factory']}()"
        elif is_field_call:
            default = options.get("default")  # type: ignore[assignment]
        else:
            default = value
        # Rendered, the field shows its default, not the attrs.field(...) call
        # (whose converter and validator are private functions); and it is an
        # instance attribute, not a class one.
        member.value = default
        member.labels.discard("class-attribute")
        kw_only = class_kw_only or str(options.get("kw_only", "False")) == "True"
        alias = options.get("alias")
        name = str(alias).strip("'\"") if alias is not None else member.name.lstrip("_")
        parameters.append(
            griffe.Parameter(
                name,
                annotation=member.annotation,
                kind=griffe.ParameterKind.keyword_only
                if kw_only
                else griffe.ParameterKind.positional_or_keyword,
                default=default,
                docstring=member.docstring,
            )
        )
    return parameters


def _attrs_init(cls: griffe.Class) -> None:
    decorator = _attrs_decorator(cls)
    if decorator is None or "__init__" in cls.members:
        return
    options = _call_arguments(decorator.value)
    if str(options.get("init", "True")) == "False":
        return
    try:
        ancestors = [base for base in reversed(cls.mro()) if _attrs_decorator(base) is not None]
    except ValueError:  # a base griffe cannot resolve
        ancestors = []
    parameters: dict[str, griffe.Parameter] = {}
    for owner in [*ancestors, cls]:
        owner_decorator = _attrs_decorator(owner)
        assert owner_decorator is not None
        kw_only = str(_call_arguments(owner_decorator.value).get("kw_only", "False")) == "True"
        for parameter in _fields(owner, kw_only):
            parameters.pop(parameter.name, None)
            parameters[parameter.name] = parameter
    ordered = sorted(parameters.values(), key=lambda p: p.kind is griffe.ParameterKind.keyword_only)
    init = griffe.Function(
        "__init__",
        lineno=cls.lineno,
        endlineno=cls.lineno,
        parent=cls,
        parameters=griffe.Parameters(
            griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword),
            *ordered,
        ),
        returns="None",
    )
    cls.set_member("__init__", init)


def _hide_private_parameters(function: griffe.Function) -> None:
    private = [
        p.name for p in function.parameters if p.name.startswith("_") and p.default is not None
    ]
    for name in private:
        del function.parameters[name]


class Signatures(griffe.Extension):
    """attrs ``__init__`` signatures, and no underscore keywords, once a package is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._visit(pkg, seen=set())

    def _visit(self, obj: griffe.Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if isinstance(obj, griffe.Class):
            _attrs_init(obj)
        elif isinstance(obj, griffe.Function):
            _hide_private_parameters(obj)
        for member in list(obj.members.values()):
            if not member.is_alias:
                self._visit(member, seen)  # type: ignore[arg-type]
