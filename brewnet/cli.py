"""The ``brewnet`` command: Caffe's ``caffe`` tool, flag for flag.

Subcommands: ``train``, ``test``, ``time``, ``device_query``, ``upgrade`` and
``layers``. Caffe's single-dash spellings (``-solver x``, ``-weights=x``) are accepted
as well as the double-dash ones. User errors print one line and exit with status 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from typing import Callable, Sequence

from brewnet.errors import BrewnetError

logger = logging.getLogger("brewnet.cli")

EXIT_USER_ERROR = 1


class CommandError(BrewnetError):
    """A command-line usage error (missing flag, conflicting flags)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors exit with status 1, as Caffe's tool does."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EXIT_USER_ERROR)


def _add(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """Add a flag under both ``-name`` (Caffe's spelling) and ``--name``."""
    parser.add_argument(f"-{name}", f"--{name}", dest=name, **kwargs)


def _add_net_state_flags(parser: argparse.ArgumentParser) -> None:
    _add(parser, "level", type=int, default=0, metavar="N",
         help="the NetState level of the net (default 0)")
    _add(parser, "stage", default="", metavar="S1,S2",
         help="comma-separated NetState stages of the net")


def _add_device_flag(parser: argparse.ArgumentParser) -> None:
    _add(parser, "gpu", default="", metavar="ID",
         help="run on this GPU (an index, or 'all' for the first one); default CPU")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``brewnet`` command."""
    parser = _Parser(
        prog="brewnet",
        description="Train, test and time Caffe nets on PyTorch, as Caffe's tool does.",
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    train = commands.add_parser("train", help="train or fine-tune a net from a solver")
    _add(train, "solver", metavar="FILE", help="the solver prototxt (required)")
    _add(train, "weights", default="", metavar="W1,W2",
         help="comma-separated .caffemodel files copied by layer name into the train "
              "and test nets before training (fine-tuning)")
    _add(train, "snapshot", default="", metavar="FILE",
         help="a .solverstate file to resume training from")
    _add(train, "iterations", type=int, default=None, metavar="N",
         help="train for N iterations in total, overriding the solver's max_iter")
    _add(train, "sigint_effect", default="stop", choices=["stop", "snapshot", "none"],
         help="what Ctrl-C (SIGINT) does: stop (after a final snapshot when "
              "snapshot_after_train is set), snapshot, or none (default stop)")
    _add(train, "sighup_effect", default="snapshot", choices=["stop", "snapshot", "none"],
         help="what SIGHUP does (default snapshot)")
    _add_net_state_flags(train)
    _add_device_flag(train)

    test = commands.add_parser("test", help="score a trained model over test batches")
    _add(test, "model", metavar="FILE", help="the net prototxt (required)")
    _add(test, "weights", default="", metavar="FILE", help="the .caffemodel to score")
    _add(test, "iterations", type=int, default=50, metavar="N",
         help="number of batches to score (default 50)")
    _add(test, "phase", default="TEST", choices=["TRAIN", "TEST"],
         help="the phase the net is built in (default TEST)")
    _add_net_state_flags(test)
    _add_device_flag(test)

    timing = commands.add_parser("time", help="time forward and backward of every layer")
    _add(timing, "model", metavar="FILE", help="the net prototxt (required)")
    _add(timing, "iterations", type=int, default=50, metavar="N",
         help="number of timed forward-backward passes (default 50)")
    _add(timing, "phase", default="TRAIN", choices=["TRAIN", "TEST"],
         help="the phase the net is built in (default TRAIN)")
    _add_net_state_flags(timing)
    _add_device_flag(timing)

    query = commands.add_parser("device_query", help="show the devices torch can use")
    _add_device_flag(query)

    upgrade = commands.add_parser(
        "upgrade", help="rewrite a legacy (V0/V1) net or model in the current format"
    )
    upgrade.add_argument("input", metavar="IN", help="a prototxt or binary model")
    upgrade.add_argument("output", metavar="OUT", help="where to write the upgraded file")

    commands.add_parser("layers", help="list the layer types brewnet knows")
    parser.set_defaults(subparsers=commands.choices)
    return parser


def _version() -> str:
    from brewnet import __version__

    return f"brewnet {__version__}"


# =============================================================================== helpers
def _require(value: str | None, flag: str, what: str) -> str:
    if not value:
        raise CommandError(f"missing -{flag}: {what}")
    return value


def _require_file(path: str, flag: str) -> str:
    if not os.path.isfile(path):
        raise CommandError(f"-{flag} file not found: {path}")
    return path


def _stages(value: str) -> list[str]:
    return [stage for stage in value.split(",") if stage]


def _select_device(gpu: str) -> None:
    import brewnet

    if not gpu:
        logger.info("Use CPU.")
        brewnet.set_mode_cpu()
        return
    index = 0 if gpu == "all" else int(gpu.split(",")[0])
    brewnet.set_device(index)
    brewnet.set_mode_gpu()
    logger.info("Use GPU with device ID %d", index)


def _phase(name: str) -> int:
    import brewnet

    return brewnet.TRAIN if name == "TRAIN" else brewnet.TEST


# =============================================================================== train
_ACTIONS = {"stop": "stop", "snapshot": "snapshot", "none": "none"}


class SignalActions:
    """Record SIGINT/SIGHUP arrivals and map them to solver actions."""

    def __init__(self, sigint_effect: str, sighup_effect: str) -> None:
        self._effects = {signal.SIGINT: sigint_effect}
        if hasattr(signal, "SIGHUP"):
            self._effects[signal.SIGHUP] = sighup_effect
        self._pending: list[str] = []
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "SignalActions":
        for signum in self._effects:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        self._pending.append(self._effects[signum])

    def requested_action(self) -> str:
        """Return 'stop', 'snapshot' or 'none' for the oldest unhandled signal."""
        while self._pending:
            effect = self._pending.pop(0)
            if effect != "none":
                return effect
        return "none"


def run_train(args: argparse.Namespace) -> int:
    from brewnet import solvers
    from brewnet.proto import caffe_pb2

    solver_path = _require_file(
        _require(args.solver, "solver", "give the solver prototxt to train with"), "solver"
    )
    if args.snapshot and args.weights:
        raise CommandError(
            "give -snapshot to resume training or -weights to fine-tune, not both"
        )
    param = solvers.read_solver_parameter(solver_path)
    param.train_state.level = args.level
    for stage in _stages(args.stage):
        param.train_state.stage.append(stage)
    _select_device(_solver_gpu(args.gpu, param))
    param.solver_mode = (
        caffe_pb2.SolverParameter.GPU
        if mode_is_gpu()
        else caffe_pb2.SolverParameter.CPU
    )
    if args.snapshot:
        _require_file(args.snapshot, "snapshot")
        del param.weights[:]
    elif args.weights:
        del param.weights[:]
        for weights in args.weights.split(","):
            param.weights.append(_require_file(weights, "weights"))
    if args.iterations is not None:
        if args.iterations < 0:
            raise CommandError(f"-iterations must be >= 0, got {args.iterations}")
        param.max_iter = args.iterations

    solver = solvers.get_solver(param, source=solver_path)
    # Nothing reads the blob diffs of a command-line run, so skip storing them.
    solver.net.fill_blob_diffs = False
    with SignalActions(args.sigint_effect, args.sighup_effect) as actions:
        solver.set_action_function(actions.requested_action)
        _attach_progress(solver)
        if args.snapshot:
            logger.info("Resuming from %s", args.snapshot)
        logger.info("Starting Optimization")
        solver.solve(args.snapshot or None)
    logger.info("Optimization Done.")
    return 0


def _solver_gpu(flag: str, param) -> str:
    """Return the -gpu value to use: the flag, or the solver's own GPU request.

    As in Caffe's tool, a solver that sets ``solver_mode: GPU`` trains on GPU
    ``device_id`` (default 0) when no -gpu flag is given. Without a CUDA device it
    trains on the CPU with a warning instead of failing.
    """
    import torch

    from brewnet.proto import caffe_pb2

    if flag or not param.HasField("solver_mode"):
        return flag
    if param.solver_mode != caffe_pb2.SolverParameter.GPU:
        return flag
    if not torch.cuda.is_available():
        logger.warning(
            "The solver asks for solver_mode: GPU, but PyTorch sees no CUDA device; "
            "training on the CPU"
        )
        return ""
    return str(param.device_id)


def mode_is_gpu() -> bool:
    from brewnet import mode

    return mode.default_device().type == "cuda"


def _attach_progress(solver) -> None:
    """Redraw the terminal progress bar after every iteration, where there is one."""
    from brewnet.logs import ProgressHandler

    handlers = [h for h in logging.getLogger("brewnet").handlers if isinstance(h, ProgressHandler)]
    if not handlers or not hasattr(solver, "add_iteration_callback"):
        return
    handler = handlers[0]
    total = solver.param.max_iter

    def redraw(iteration: int, loss: float) -> None:
        handler.update(iteration, total, f"loss {loss:.4g}")
        if iteration >= total:
            handler.finish()

    solver.add_iteration_callback(redraw)


# =============================================================================== test
def run_test(args: argparse.Namespace) -> int:
    import brewnet

    model = _require_file(_require(args.model, "model", "give the net prototxt to score"), "model")
    weights = _require(args.weights, "weights", "give the .caffemodel to score")
    _require_file(weights, "weights")
    if args.iterations <= 0:
        raise CommandError(f"-iterations must be > 0, got {args.iterations}")
    _select_device(args.gpu)
    net = brewnet.Net(model, _phase(args.phase), weights=weights, level=args.level,
                      stages=_stages(args.stage))
    logger.info("Running for %d iterations.", args.iterations)
    weights_by_blob = net.blob_loss_weights
    scores: list[float] = []
    names: list[str] = []
    total_loss = 0.0
    for batch in range(args.iterations):
        outputs = net_forward_outputs(net)
        total_loss += net.loss or 0.0
        position = 0
        for name, values in outputs:
            for value in values.ravel():
                if batch == 0:
                    scores.append(float(value))
                    names.append(name)
                else:
                    scores[position] += float(value)
                logger.info("Batch %d, %s = %s", batch, name, _g(float(value)))
                position += 1
    logger.info("Loss: %s", _g(total_loss / args.iterations))
    for name, score in zip(names, scores):
        mean = score / args.iterations
        weight = weights_by_blob.get(name, 0.0)
        suffix = f" (* {_g(weight)} = {_g(weight * mean)} loss)" if weight else ""
        logger.info("%s = %s%s", name, _g(mean), suffix)
    return 0


def net_forward_outputs(net) -> list[tuple[str, object]]:
    """Run one forward pass without gradients; return (name, array) per output."""
    net.forward_no_grad()
    return [(name, net.blobs[name].data) for name in net.outputs]


def _g(value: float) -> str:
    """Format a float as C++ streams do by default (6 significant digits)."""
    return f"{value:.6g}"


# =============================================================================== time
def run_time(args: argparse.Namespace) -> int:
    from brewnet.timing import time_net, timing_net

    model = _require_file(_require(args.model, "model", "give the net prototxt to time"), "model")
    if args.iterations <= 0:
        raise CommandError(f"-iterations must be > 0, got {args.iterations}")
    _select_device(args.gpu)
    net = timing_net(model, _phase(args.phase), args.level, _stages(args.stage))
    time_net(net, args.iterations)
    return 0


# =============================================================================== others
def run_device_query(args: argparse.Namespace) -> int:
    import torch

    logger.info("Querying devices")
    logger.info("torch %s, %d CPU threads", torch.__version__, torch.get_num_threads())
    if not torch.cuda.is_available():
        logger.info("No CUDA device is available; brewnet runs on the CPU.")
        return 0
    indices = range(torch.cuda.device_count()) if not args.gpu or args.gpu == "all" else [
        int(i) for i in args.gpu.split(",")
    ]
    for index in indices:
        props = torch.cuda.get_device_properties(index)
        logger.info("Device id:                     %d", index)
        logger.info("Name:                          %s", props.name)
        logger.info("Major revision number:         %d", props.major)
        logger.info("Minor revision number:         %d", props.minor)
        logger.info("Total global memory:           %d", props.total_memory)
        logger.info("Number of multiprocessors:     %d", props.multi_processor_count)
    return 0


def run_upgrade(args: argparse.Namespace) -> int:
    try:
        from brewnet.io.legacy import upgrade_file
    except ImportError:
        raise CommandError("this build of brewnet cannot upgrade legacy files") from None
    if not os.path.isfile(args.input):
        raise CommandError(f"input file not found: {args.input}")
    if _already_current(args.input):
        logger.warning("File already in latest proto format: %s", args.input)
    upgrade_file(args.input, args.output)
    logger.info("Wrote upgraded file to %s", args.output)
    return 0


def _already_current(path: str) -> bool:
    """Return whether the text net at ``path`` needs no upgrade (False if unsure)."""
    from google.protobuf import text_format

    from brewnet.io.legacy import net_needs_upgrade
    from brewnet.io.upgrade import needs_input_upgrade
    from brewnet.proto import caffe_pb2

    try:
        with open(path, encoding="utf-8") as handle:
            net = text_format.Parse(handle.read(), caffe_pb2.NetParameter())
    except (UnicodeDecodeError, text_format.ParseError):
        return False
    return not (net_needs_upgrade(net) or needs_input_upgrade(net))


def run_layers(args: argparse.Namespace) -> int:
    import brewnet

    for name in brewnet.layer_type_list():
        sys.stdout.write(f"{name}\n")
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": run_train,
    "test": run_test,
    "time": run_time,
    "device_query": run_device_query,
    "upgrade": run_upgrade,
    "layers": run_layers,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``brewnet`` command and return its exit status."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        # Report unknown flags with the usage of the subcommand they were given to.
        owner = args.subparsers.get(args.command, parser) if args.command else parser
        owner.error(f"unrecognized arguments: {' '.join(extras)}")
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USER_ERROR
    from brewnet import logs

    logs.install()
    started = time.time()
    try:
        return _COMMANDS[args.command](args)
    except (BrewnetError, FileNotFoundError, IsADirectoryError, PermissionError) as error:
        message = str(error).replace("\n", " ")
        sys.stderr.write(f"brewnet {args.command}: error: {message}\n")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        sys.stderr.write(f"brewnet {args.command}: interrupted\n")
        return 130
    finally:
        logger.debug("%s took %.1f s", args.command, time.time() - started)


if __name__ == "__main__":
    sys.exit(main())
