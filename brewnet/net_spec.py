"""Write nets in Python: pycaffe's NetSpec, ``layers`` (L) and ``params`` (P).

>>> from brewnet import layers as L, params as P
>>> n = NetSpec()
>>> n.data = L.Input(shape=dict(dim=[1, 1, 28, 28]))
>>> n.pool = L.Pooling(n.data, kernel_size=2, stride=2, pool=P.Pooling.MAX)
>>> print(n.to_proto())        # doctest: +SKIP

Layers and blobs get their names as in pycaffe:

- A top assigned to a NetSpec attribute is named after the attribute; a layer is
  named after its first top. Other tops are named ``<Type><count>`` (``Convolution1``),
  counting per type in the order the tops are first reached.
- ``in_place=True`` makes the tops the bottoms' names.
- ``ntop=n`` gives n tops (a tuple); ``ntop=0`` returns the layer itself, which
  can be assigned to a NetSpec attribute to name it.
- Keyword arguments go into the type's parameter message when they are fields of it
  (``num_output`` into ``convolution_param`` for a Convolution), otherwise into the
  LayerParameter (``loss_weight``, ``include``). A keyword that ends in ``param``
  always goes into the LayerParameter. Dicts become messages, lists repeated fields,
  and a single value for a repeated field becomes a one-item list.
"""

from __future__ import annotations

import difflib
from collections import Counter, OrderedDict

from google.protobuf.message import Message

from brewnet.proto import caffe_pb2


def param_name_dict() -> dict[str, str]:
    """Map each ``XParameter`` message name stem to its LayerParameter field stem.

    ``{"Convolution": "convolution", "InnerProduct": "inner_product", ...}``; a layer
    type finds its parameter message through this map, as in pycaffe.
    """
    names = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if field.name.endswith("_param") and field.message_type is not None:
            message_name = field.message_type.name
            if message_name.endswith("Parameter"):
                names[message_name[: -len("Parameter")]] = field.name[: -len("_param")]
    return names


_PARAM_NAMES = param_name_dict()


def to_proto(*tops: "Top") -> caffe_pb2.NetParameter:
    """Return a NetParameter with every layer needed to compute ``tops``.

    All blob and layer names are generated (``Convolution1``, ...).
    """
    layers: OrderedDict = OrderedDict()
    autonames: Counter = Counter()
    for top in tops:
        _check_top(top, "to_proto argument")
        top.fn._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


def assign_proto(proto: Message, name: str, value) -> None:
    """Set field ``name`` of ``proto`` from a Python value, recursively.

    Lists fill repeated fields (a list of dicts adds one message per dict), dicts
    fill messages, messages are copied, and other values are assigned. A single
    value for a repeated field is taken as a one-item list.

    Raises:
        AttributeError: ``proto`` has no field ``name``.
        TypeError, ValueError: the value does not fit the field's type.
    """
    field = proto.DESCRIPTOR.fields_by_name.get(name)
    if field is None:
        raise AttributeError(_unknown_field_message(proto, name))
    where = f"{proto.DESCRIPTOR.name}.{name}"
    repeated = field.is_repeated
    if repeated and not isinstance(value, (list, tuple)):
        value = [value]
    try:
        if repeated:
            _assign_repeated(proto, name, list(value))
        elif isinstance(value, dict):
            if field.message_type is None:
                raise TypeError("the field is not a message, so it takes no dict")
            target = getattr(proto, name)
            target.SetInParent()
            for key, item in value.items():
                assign_proto(target, key, item)
        elif isinstance(value, Message):
            getattr(proto, name).CopyFrom(value)
        else:
            setattr(proto, name, value)
    except (TypeError, ValueError) as error:
        if str(error).startswith("field "):
            raise
        raise type(error)(f"field {where}: cannot assign {value!r}: {error}") from None


def _assign_repeated(proto: Message, name: str, values: list) -> None:
    container = getattr(proto, name)
    for value in values:
        if isinstance(value, dict):
            item = container.add()
            for key, inner in value.items():
                assign_proto(item, key, inner)
        elif isinstance(value, Message):
            container.add().CopyFrom(value)
        else:
            container.append(value)


def _unknown_field_message(proto: Message, name: str) -> str:
    fields = [f.name for f in proto.DESCRIPTOR.fields]
    close = difflib.get_close_matches(name, fields, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"{proto.DESCRIPTOR.name} has no field '{name}'{hint}"


def _check_top(value, what: str) -> None:
    if not isinstance(value, Top):
        raise TypeError(
            f"{what} is a {type(value).__name__}, not a Top; pass the result of an "
            f"L.<Type>(...) call (one of its tops when it has several)"
        )


class Top:
    """One output blob of a layer (:class:`Function`): the ``n``-th of ``fn``'s tops."""

    def __init__(self, fn: "Function", n: int) -> None:
        self.fn = fn
        self.n = n

    def to_proto(self) -> caffe_pb2.NetParameter:
        """Return a NetParameter with every layer needed to compute this top."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames) -> None:
        return self.fn._to_proto(layers, names, autonames)

    def __repr__(self) -> str:
        return f"<Top {self.n} of {self.fn.type_name}>"


class Function:
    """A layer: its type, its bottoms (Tops of other layers) and its parameters."""

    def __init__(self, type_name: str, inputs: tuple, params: dict) -> None:
        for index, value in enumerate(inputs):
            _check_top(value, f"L.{type_name} bottom {index}")
        self.type_name = type_name
        self.inputs = inputs
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        if not isinstance(self.ntop, int) or self.ntop < 0:
            raise ValueError(f"L.{type_name}: ntop must be an integer >= 0, got {self.ntop!r}")
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _get_name(self, names: dict, autonames: Counter) -> str:
        if self not in names and self.ntop > 0:
            names[self] = self._get_top_name(self.tops[0], names, autonames)
        elif self not in names:
            autonames[self.type_name] += 1
            names[self] = self.type_name + str(autonames[self.type_name])
        return names[self]

    def _get_top_name(self, top: Top, names: dict, autonames: Counter) -> str:
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = top.fn.type_name + str(autonames[top.fn.type_name])
        return names[top]

    def _to_proto(self, layers: OrderedDict, names: dict, autonames: Counter) -> None:
        if self in layers:
            return
        bottom_names = []
        for value in self.inputs:
            value._to_proto(layers, names, autonames)
            bottom_names.append(layers[value.fn].top[value.n])
        layer = caffe_pb2.LayerParameter()
        layer.type = self.type_name
        layer.bottom.extend(bottom_names)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            for top in self.tops:
                layer.top.append(self._get_top_name(top, names, autonames))
        layer.name = self._get_name(names, autonames)
        for key, value in self.params.items():
            self._assign(layer, key, value)
        layers[self] = layer

    def _assign(self, layer: caffe_pb2.LayerParameter, key: str, value) -> None:
        """Put keyword ``key`` into the type's parameter message or the layer."""
        if not key.endswith("param") and self.type_name in _PARAM_NAMES:
            message = getattr(layer, _PARAM_NAMES[self.type_name] + "_param")
            if key in message.DESCRIPTOR.fields_by_name:
                assign_proto(message, key, value)
                return
        if key in layer.DESCRIPTOR.fields_by_name:
            assign_proto(layer, key, value)
            return
        raise AttributeError(self._unknown_keyword_message(key))

    def _unknown_keyword_message(self, key: str) -> str:
        stem = _PARAM_NAMES.get(self.type_name)
        fields = [f.name for f in caffe_pb2.LayerParameter.DESCRIPTOR.fields]
        if stem is not None:
            message = getattr(caffe_pb2.LayerParameter(), stem + "_param")
            fields += [f.name for f in message.DESCRIPTOR.fields]
            where = f"LayerParameter or {message.DESCRIPTOR.name}"
        else:
            where = (
                f"LayerParameter, and type {self.type_name} has no parameter message of "
                f"its own; pass the message by name (convolution_param=dict(...))"
            )
        close = difflib.get_close_matches(key, fields, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        return f"L.{self.type_name}: keyword '{key}' is not a field of {where}.{hint}"

    def __repr__(self) -> str:
        return f"<Function {self.type_name}, {self.ntop} tops>"


class NetSpec:
    """A set of named tops; :meth:`to_proto` builds every layer they need.

    Assign tops as attributes (``n.conv1 = L.Convolution(n.data, ...)``) or items
    (``n["conv1"] = ...``); the attribute name becomes the blob name and the name of
    the layer that produces it.
    """

    def __init__(self) -> None:
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name: str, value) -> None:
        self.tops[name] = value

    def __getattr__(self, name: str):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(f"NetSpec has no top named '{name}'") from None

    def __setitem__(self, key: str, value) -> None:
        self.__setattr__(key, value)

    def __getitem__(self, item: str):
        return self.__getattr__(item)

    def __delitem__(self, key: str) -> None:
        del self.tops[key]

    def __contains__(self, key: str) -> bool:
        return key in self.tops

    def keys(self) -> list[str]:
        return list(self.tops)

    def to_proto(self) -> caffe_pb2.NetParameter:
        """Return a NetParameter with the layers that produce every assigned top."""
        for name, value in self.tops.items():
            if isinstance(value, tuple):
                raise TypeError(
                    f"NetSpec attribute '{name}' holds {len(value)} tops; assign each "
                    f"top to its own attribute (n.data, n.label = L.Data(..., ntop=2))"
                )
            if not isinstance(value, (Top, Function)):
                raise TypeError(
                    f"NetSpec attribute '{name}' is a {type(value).__name__}; assign "
                    f"tops made by L.<Type>(...)"
                )
        names = {value: key for key, value in self.tops.items()}
        autonames: Counter = Counter()
        layers: OrderedDict = OrderedDict()
        for value in self.tops.values():
            value._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


def layer_function(type_name: str):
    """Return the function that L.<type_name> is: it builds a :class:`Function`.

    The function returns the one top, a tuple of tops for ``ntop > 1``, or the
    Function itself for ``ntop=0``.
    """

    def make_layer(*bottoms, **params):
        fn = Function(type_name, bottoms, params)
        if fn.ntop == 0:
            return fn
        if fn.ntop == 1:
            return fn.tops[0]
        return fn.tops

    make_layer.__name__ = type_name
    make_layer.__qualname__ = f"layers.{type_name}"
    make_layer.__doc__ = f"Build a {type_name} layer spec (see brewnet.net_spec)."
    return make_layer


def unknown_layer_type_message(name: str) -> str:
    """Return the error for ``L.<name>`` when no layer type ``name`` is registered."""
    from brewnet.layers.registry import suggest_layer_types

    close = suggest_layer_types(name)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return (
        f"no layer type '{name}' is registered, so layers.{name} does not exist.{hint} "
        f"brewnet.layer_type_list() lists the known types; "
        f"brewnet.net_spec.Layers(strict=False) builds specs of any type name."
    )


class Layers:
    """A pseudo-module of layer functions: ``Layers().Convolution(bottom, ...)``.

    With ``strict`` (the default) only registered layer types exist, so a typo
    raises AttributeError; ``strict=False`` accepts any type name, for prototxt meant
    for a Caffe build with extra layers.
    """

    def __init__(self, strict: bool = True) -> None:
        self._strict = strict

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if self._strict:
            from brewnet.layers.registry import layer_type_list

            if name not in layer_type_list():
                raise AttributeError(unknown_layer_type_message(name))
        return layer_function(name)


class _ParameterConstants:
    """The enum constants of one ``<Name>Parameter`` message (``P.Pooling.MAX``)."""

    def __init__(self, name: str, message) -> None:
        self._name = name
        self._message = message

    def __getattr__(self, constant: str):
        if constant.startswith("_"):
            raise AttributeError(constant)
        try:
            return getattr(self._message, constant)
        except AttributeError:
            values = [
                value.name
                for enum in self._message.DESCRIPTOR.enum_types
                for value in enum.values
            ]
            close = difflib.get_close_matches(constant, values, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            known = f" Its constants: {', '.join(values)}." if values else ""
            raise AttributeError(
                f"{self._name}Parameter has no constant '{constant}'.{hint}{known}"
            ) from None


class Parameters:
    """A pseudo-module of parameter constants: ``Parameters().Pooling.MAX``."""

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        message = getattr(caffe_pb2, name + "Parameter", None)
        if message is None:
            known = sorted(
                n[: -len("Parameter")] for n in dir(caffe_pb2) if n.endswith("Parameter")
            )
            close = difflib.get_close_matches(name, known, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise AttributeError(f"caffe.proto has no message {name}Parameter.{hint}")
        return _ParameterConstants(name, message)


layers = Layers()
params = Parameters()
