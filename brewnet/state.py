"""Phase, level and stage filtering of layers (NetState and NetStateRule)."""

from __future__ import annotations

import logging

from brewnet.errors import NetDefinitionError
from brewnet.proto import caffe_pb2

logger = logging.getLogger("brewnet.net")


def make_state(
    phase: int, level: int | None = None, stages: list[str] | tuple[str, ...] | None = None,
    base: caffe_pb2.NetState | None = None,
) -> caffe_pb2.NetState:
    """Return a NetState: ``base`` (the net's own ``state``) with the given overrides.

    Stages are added to those of ``base``, as Caffe's Net constructor does.
    """
    state = caffe_pb2.NetState()
    if base is not None:
        state.CopyFrom(base)
    state.phase = phase
    if level is not None:
        state.level = level
    for stage in stages or ():
        state.stage.append(stage)
    return state


def state_meets_rule(
    state: caffe_pb2.NetState, rule: caffe_pb2.NetStateRule, layer_name: str
) -> bool:
    """Return whether ``state`` satisfies every condition of ``rule``.

    The reason a rule fails is logged with Caffe's wording.
    """
    if rule.HasField("phase") and rule.phase != state.phase:
        logger.info(
            "The NetState phase (%d) differed from the phase (%d) specified by a rule "
            "in layer %s", state.phase, rule.phase, layer_name,
        )
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        logger.info(
            "The NetState level (%d) is above the min_level (%d) specified by a rule "
            "in layer %s", state.level, rule.min_level, layer_name,
        )
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        logger.info(
            "The NetState level (%d) is above the max_level (%d) specified by a rule "
            "in layer %s", state.level, rule.max_level, layer_name,
        )
        return False
    for stage in rule.stage:
        if stage not in state.stage:
            logger.info(
                "The NetState did not contain stage '%s' specified by a rule in layer %s",
                stage, layer_name,
            )
            return False
    for stage in rule.not_stage:
        if stage in state.stage:
            logger.info(
                "The NetState contained a not_stage '%s' specified by a rule in layer %s",
                stage, layer_name,
            )
            return False
    return True


def layer_included(layer: caffe_pb2.LayerParameter, state: caffe_pb2.NetState) -> bool:
    """Return whether ``layer`` belongs to a net in ``state``.

    A layer with include rules is kept when any of them is met. A layer with exclude
    rules is kept unless one of them is met. A layer with neither is always kept.

    Raises:
        NetDefinitionError: the layer has both include and exclude rules.
    """
    if layer.include and layer.exclude:
        raise NetDefinitionError(
            f"layer '{layer.name}' has both include and exclude rules; specify one kind"
        )
    if layer.include:
        return any(state_meets_rule(state, rule, layer.name) for rule in layer.include)
    return not any(state_meets_rule(state, rule, layer.name) for rule in layer.exclude)


def filter_net(
    net: caffe_pb2.NetParameter, state: caffe_pb2.NetState
) -> caffe_pb2.NetParameter:
    """Return a copy of ``net`` holding only the layers included in ``state``."""
    filtered = caffe_pb2.NetParameter()
    filtered.CopyFrom(net)
    del filtered.layer[:]
    for layer in net.layer:
        if layer_included(layer, state):
            filtered.layer.add().CopyFrom(layer)
    filtered.state.CopyFrom(state)
    return filtered
