"""joulecut: the command line. It parses arguments, calls the packages and prints; nothing imports it.

Exit codes: 0 ok, 2 usage error, 3 invalid model / spec / data (the message names the file and
the node, key or line), 1 internal error.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INPUT = 0, 1, 2, 3


class UsageError(Exception):
    """A command line that parses but does not make sense."""


class _Progress:
    """One status line on stderr, only on a terminal and without -q: a message (pruning steps)
    or, through ``bar``, a bar over layers (estimation)."""

    def __init__(self, quiet: bool):
        self.enabled = not quiet and sys.stderr.isatty()

    def __call__(self, message: str) -> None:
        if self.enabled:
            sys.stderr.write(f"\r\x1b[K{message[:100]}")
            sys.stderr.flush()

    def bar(self, i: int, n: int, what: str = "") -> None:
        width, done = 30, int(30 * (i + 1) / max(n, 1))
        self(f"estimating [{'#' * done}{'.' * (width - done)}] {i + 1}/{n} {what[:30]}")

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _input_shapes(items: Sequence[str]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for item in items:
        name, sep, dims = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            shape = tuple(int(d) for d in dims.lower().split("x"))
            if any(d < 1 for d in shape):
                raise ValueError
        except ValueError:
            raise UsageError(f"--input-shape must look like NAME=1x3x224x224, got {item!r}") from None
        shapes[name] = shape
    return shapes


def _write_or_print(text: str, output: str | None, protect: Sequence[str]) -> None:
    if output is None:
        print(text)
        return
    from energy.io import write_atomic

    try:
        write_atomic(output, text if text.endswith("\n") else text + "\n", protect=tuple(protect))
    except ValueError as e:
        raise UsageError(str(e)) from None


def _import(path: str, args: argparse.Namespace):
    from energy import load_model

    return load_model(path, batch=args.batch, input_shapes=_input_shapes(args.input_shape), strict=args.strict)


def _graph_with_data(result, data: str | None):
    if data is None:
        return result.graph
    from energy.activations import load_npz_inputs, with_measured_densities

    return with_measured_densities(result, load_npz_inputs(data, result.model))


def cmd_estimate(args: argparse.Namespace) -> int:
    from energy import estimate

    result = _import(args.model, args)
    for w in result.warnings:
        print(f"joulecut: warning: {w}", file=sys.stderr)
    graph = _graph_with_data(result, args.data)
    progress = _Progress(args.quiet)
    try:
        report = estimate(graph, args.hw, dataflow=args.dataflow, objective=args.objective, progress=progress.bar)
    finally:
        progress.close()
    if args.explain:
        names = [l.name for l in report.layers]
        missing = [n for n in args.explain if n not in names]
        if missing:
            raise UsageError(f"--explain: no layer named {', '.join(missing)} (layers: {', '.join(names[:12])}"
                             + (", ..." if len(names) > 12 else "") + ")")
    text = {"table": report.table, "json": report.to_json, "csv": report.to_csv}[args.format]()
    if args.explain and args.format == "table":
        text += "\n\n" + "\n\n".join(report.explain(n) for n in args.explain)
    _write_or_print(text.rstrip("\n"), args.output, protect=[args.model])
    if args.plot:
        if Path(args.plot).resolve() == Path(args.model).resolve():
            raise UsageError(f"refusing to overwrite the input file {args.model}")
        report.plot(args.plot)
        if not args.quiet:
            print(f"wrote {args.plot}", file=sys.stderr)
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from energy import estimate

    reports = []
    for path in (args.model_a, args.model_b):
        result = _import(path, args)
        reports.append(estimate(result.graph, args.hw, dataflow=args.dataflow, objective=args.objective))
    print(reports[0].diff(reports[1]).table())
    return EXIT_OK


def cmd_hw(args: argparse.Namespace) -> int:
    from hwspecs import describe_spec, list_specs, load_spec

    if args.hw_command == "list":
        specs = list_specs()
        width = max(len(n) for n, _ in specs)
        for name, description in specs:
            print(f"{name:<{width}}  {description}")
    elif args.hw_command == "show":
        print(describe_spec(load_spec(args.name)))
    else:
        spec = load_spec(args.file)
        print(f"{args.file}: ok ({spec.name}: {len(spec.levels)} levels, "
              f"{spec.pe_array.rows}x{spec.pe_array.cols} PEs, dataflows {', '.join(d.value for d in spec.dataflows)})")
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from pruning.validate import validate

    report = validate(args.model, args.hw, data=args.data, repeats=args.repeats, threads=args.threads, seed=args.seed,
                      batch=args.batch)
    print(report.table())
    return EXIT_OK


def _check_output(output: str, model: str) -> None:
    if Path(output).resolve() == Path(model).resolve():
        from energy.errors import DataError

        raise DataError(f"output path {output} is the input model: choose another -o (the input is never overwritten)")


def cmd_prune(args: argparse.Namespace) -> int:
    from pruning.api import prune
    from pruning.budget import parse_budget
    from pruning.data import load_npz

    _check_output(args.output, args.model)
    if args.granularity == "hashed":
        return _prune_hashed(args)
    if args.granularity == "reuse":
        return _prune_reuse(args)
    if args.layers:
        raise UsageError("--layers goes with --granularity hashed or reuse")
    budget = parse_budget(args.budget) if args.budget is not None else None  # a bad budget fails before any work
    x, y = load_npz(args.data)
    val = load_npz(args.val) if args.val else None
    method = args.method or ("budget" if budget is not None else "energy-aware")
    progress = _Progress(args.quiet)
    try:
        result = prune(args.model, args.hw, budget=budget, method=method, granularity=args.granularity,
                       train=(x, y), val=val, seed=args.seed, allowed_drop=args.allowed_drop,
                       finetune_epochs=args.finetune_epochs, channel_multiple=args.channel_multiple,
                       progress=progress)
    finally:
        progress.close()
    result.save(args.output, source=args.model)
    from energy.io import write_atomic

    stem = Path(args.output).with_suffix("")
    write_atomic(f"{stem}.json", result.to_json(), protect=(args.model,))
    write_atomic(f"{stem}.md", result.to_markdown(), protect=(args.model,))
    print(result.to_markdown().rstrip())
    print(f"\nwrote {args.output}, {stem}.json, {stem}.md")
    return EXIT_OK


def _prune_hashed(args: argparse.Namespace) -> int:
    """Chosen wide Gemm/MatMul layers become SLIDE hashed layers; the estimate shows the effect."""
    from energy import estimate, load_model
    from pruning.data import load_npz
    from pruning.hashed import export_hashed, prune_hashed

    if not args.layers:
        raise UsageError("--granularity hashed needs --layers NAME[,NAME...] (the wide Gemm/MatMul layers to hash)")
    if args.budget is not None:
        raise UsageError("--granularity hashed reaches --target-active, not an energy budget")
    result = prune_hashed(args.model, [n for n in args.layers.split(",") if n], load_npz(args.data),
                          target_active_fraction=args.target_active, seed=args.seed)
    export_hashed(result, args.output, source=args.model)
    before = estimate(load_model(args.model).graph, args.hw)
    after = estimate(load_model(args.output).graph, args.hw)
    for name, layer in result.layers.items():
        print(f"{name}: {layer.to_dict()}")
    print(f"accuracy {result.accuracy_before} -> {result.accuracy_after}")
    print(before.diff(after).table())
    print(f"wrote {args.output}")
    return EXIT_OK


def _prune_reuse(args: argparse.Namespace) -> int:
    """Chosen convs become deep-reuse convs; cluster ratios measured on the first 64 inputs."""
    from energy import estimate, load_model
    from energy.io import write_atomic
    from pruning.data import load_npz
    from pruning.reuse import to_reuse

    if not args.layers:
        raise UsageError("--granularity reuse needs --layers NAME[,NAME...] (the convs to run with deep reuse)")
    x, _ = load_npz(args.data)
    result = to_reuse(args.model, [n for n in args.layers.split(",") if n], x[:64],
                      sub_len=args.reuse_sub_len, n_hashes=args.reuse_hashes, seed=args.seed)
    write_atomic(args.output, result.model.SerializeToString(), protect=(args.model,))
    for layer in result.layers.values():
        print(f"{layer.name}: cluster ratio {layer.cluster_ratio:.3f}, output error {layer.relative_error:.4f}, "
              f"{layer.mac_ratio:.2f}x fewer MACs")
    print(estimate(load_model(args.model).graph, args.hw).diff(estimate(load_model(args.output).graph, args.hw)).table())
    print(f"wrote {args.output}")
    return EXIT_OK


def cmd_train_sparse(args: argparse.Namespace) -> int:
    import torch

    from pruning.data import load_npz, split
    from pruning.dsr import train_sparse
    from pruning.export import export_onnx
    from pruning.onnx_torch import onnx_to_torch
    from pruning.train import accuracy

    _check_output(args.output, args.model)
    if (args.sparsity is None) == (args.energy_budget is None):
        raise UsageError("give exactly one of --sparsity (e.g. 0.8) and --energy-budget (e.g. 40%, with --hw)")
    x, y = load_npz(args.data)
    (tx, ty), (vx, vy) = split(x, y, args.val_fraction, args.seed)
    torch.manual_seed(args.seed)
    module = onnx_to_torch(args.model)
    for sub in module.modules():
        if sub is not module and hasattr(sub, "reset_parameters"):
            sub.reset_parameters()  # train from scratch: the ONNX file gives the architecture
    nonzero_budget, how = None, f"sparsity {args.sparsity}"
    if args.energy_budget is not None:
        if args.hw is None:
            raise UsageError("--energy-budget needs --hw")
        from energy import load_model
        from hwspecs import load_spec
        from pruning.budget import parse_budget
        from pruning.sparse_budget import density_for_energy

        budget = parse_budget(args.energy_budget)
        graph = load_model(args.model).graph
        density = density_for_energy(graph, load_spec(args.hw), budget)
        weights = sum(l.dims.weight_elements for l in graph.mac_layers() if l.weight is not None)
        nonzero_budget, how = max(1, int(density * weights)), f"energy budget {budget}: weight density {density:.3f}"
    model, history = train_sparse(module, (tx, ty), epochs=args.epochs, lr=args.lr, method=args.method, seed=args.seed,
                                  sparsity=args.sparsity, nonzero_budget=nonzero_budget,
                                  scale_initial_weights=not args.no_scale_init)
    acc = accuracy(model, torch.from_numpy(vx), torch.from_numpy(vy))
    export_onnx(model, torch.from_numpy(tx[:1]), args.output, source=args.model)
    total = sum(int(p.numel()) for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1)
    nonzero = sum(int(torch.count_nonzero(p)) for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1)
    print(f"{args.method} sparse training ({how}): {nonzero}/{total} weights nonzero "
          f"({100 * (1 - nonzero / total):.1f}% sparse), validation accuracy {acc:.4f}")
    print(f"wrote {args.output}")
    return EXIT_OK


def cmd_sweep(args: argparse.Namespace) -> int:
    from sweep import run_sweep

    try:
        result = run_sweep(args.config, output=args.output, jobs=args.jobs, ray=args.ray, resume=args.resume,
                           progress=False if args.quiet else None)
    except KeyboardInterrupt:
        print("joulecut: interrupted; finished cells are kept: re-run with --resume to do the rest", file=sys.stderr)
        return 130
    print(result.summary())
    return EXIT_OK if not result.failed else EXIT_INTERNAL


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hw", required=True, help="built-in spec name (see `joulecut hw list`) or a YAML file")
    p.add_argument("--batch", type=int, default=None, help="batch size for a symbolic batch dimension")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=1x3x224x224",
                   help="static shape of a model input (repeatable)")
    p.add_argument("--dataflow", choices=["rs", "ws", "os", "nlr"], default=None,
                   help="restrict MAC layers to one of the spec's dataflows (default: best of all)")
    p.add_argument("--objective", choices=["energy", "edp"], default="energy",
                   help="what the mapping search minimises (edp: energy x delay)")
    p.add_argument("--strict", action="store_true", help="an unknown op is an error, not a warning")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="joulecut", description="Estimate and cut the energy of neural networks.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("estimate", help="per-layer energy of an ONNX model on a device")
    p.add_argument("model", help="ONNX file")
    _add_model_options(p)
    p.add_argument("--data", help=".npz with sample inputs (key x): measure activation densities")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.add_argument("-o", "--output", help="write the result here instead of stdout")
    p.add_argument("--plot", metavar="FILE.png", help="stacked bar chart per layer by memory level")
    p.add_argument("--explain", action="append", default=[], metavar="LAYER",
                   help="also print every access count and pJ of this layer (repeatable)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("compare", help="two models side by side, per layer")
    p.add_argument("model_a")
    p.add_argument("model_b")
    _add_model_options(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("prune", help="prune a model to an energy budget and export it as ONNX")
    p.add_argument("model", help="ONNX file (never modified)")
    p.add_argument("--hw", required=True, help="built-in spec name or a YAML file")
    p.add_argument("--budget", help="energy budget with a unit: 40%% of the dense estimate, or 2.5mJ, 800uJ ...")
    p.add_argument("--data", required=True, help=".npz with x (inputs) and y (labels); split with --seed")
    p.add_argument("--val", help=".npz validation set (x, y); default: a seeded 20%% split of --data")
    p.add_argument("-o", "--output", required=True, help="pruned ONNX file (a .json and .md report go beside it)")
    p.add_argument("--method", choices=["energy-aware", "budget", "magnitude"], default=None,
                   help="default: budget when --budget is given, else energy-aware")
    p.add_argument("--granularity", choices=["weight", "channel", "block", "hashed", "reuse"], default="channel")
    p.add_argument("--layers", help="with --granularity hashed / reuse: the Gemm/MatMul layers to hash, or the "
                                    "convs to run with deep reuse, comma-separated")
    p.add_argument("--reuse-sub-len", type=int, default=8, help="with --granularity reuse: sub-vector length")
    p.add_argument("--reuse-hashes", type=int, default=6, help="with --granularity reuse: hashes per sub-vector")
    p.add_argument("--target-active", type=float, default=0.05,
                   help="with --granularity hashed: fraction of output neurons active per sample")
    p.add_argument("--allowed-drop", type=float, default=0.01, help="accuracy drop allowed (energy-aware), 0.01 = 1 point")
    p.add_argument("--finetune-epochs", type=float, default=3.0)
    p.add_argument("--channel-multiple", type=int, default=1, help="round kept channels to a multiple (e.g. 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("train-sparse", help="train a model from scratch at a fixed number of nonzero weights (DSR)")
    p.add_argument("model", help="ONNX file giving the architecture (its weights are re-initialised)")
    p.add_argument("--data", required=True, help=".npz with x and y")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--sparsity", type=float, help="fraction of weights that are zero, e.g. 0.8")
    p.add_argument("--energy-budget", help="or: the estimated energy to meet (40%%, 2mJ ...), with --hw")
    p.add_argument("--hw", help="spec for --energy-budget")
    p.add_argument("--method", choices=["dsr", "static"], default="dsr")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--no-scale-init", action="store_true",
                   help="keep torch's default init (by default kept weights are scaled up for the sparse fan-in)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train_sparse)

    p = sub.add_parser("validate", help="run a (pruned) model on the kernels: measured vs estimated")
    p.add_argument("model", help="ONNX file")
    p.add_argument("--hw", required=True, help="built-in spec name or a YAML file")
    p.add_argument("--data", help=".npz with inputs (key x); default: seeded random inputs")
    p.add_argument("--repeats", type=int, default=15, help="timed rounds, each running the kernels, the all-dense path and onnxruntime once in turn (medians)")
    p.add_argument("--batch", type=int, default=1, help="batch size for a symbolic batch dimension")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("sweep", help="models x devices x budgets: estimate, prune, export, validate, report")
    p.add_argument("config", help="sweep YAML (see examples/sweep/default.yaml)")
    p.add_argument("-o", "--output", help="output folder (default: the config's `output`)")
    p.add_argument("-j", "--jobs", type=int, default=None, help="worker processes (default: one per CPU)")
    p.add_argument("--ray", metavar="ADDRESS", help="run the cells on Ray: a cluster address, or `local`")
    p.add_argument("--resume", action="store_true", help="keep finished cells of an earlier (interrupted) run")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("hw", help="built-in and user hardware specs")
    hw = p.add_subparsers(dest="hw_command", required=True)
    hw.add_parser("list", help="the built-in specs")
    show = hw.add_parser("show", help="one spec in full")
    show.add_argument("name", help="built-in name or YAML file")
    check = hw.add_parser("check", help="validate a YAML spec")
    check.add_argument("file")
    p.set_defaults(func=cmd_hw)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def _user_errors() -> tuple[type[BaseException], ...]:
    from energy.errors import DataError, ModelError, OptionError
    from hwspecs.errors import SpecError

    errors: tuple[type[BaseException], ...] = (SpecError, ModelError, DataError, OptionError)
    try:  # pruning.budget and sweep.errors import no torch, but an install without them may exist
        from pruning.budget import BudgetError

        errors += (BudgetError,)
        from sweep.errors import SweepConfigError, SweepOutputError

        errors += (SweepConfigError, SweepOutputError)
    except ImportError:
        pass
    return errors


def _usage_errors() -> tuple[type[BaseException], ...]:
    try:
        from sweep.errors import SweepBackendError
    except ImportError:
        return (UsageError,)
    return (UsageError, SweepBackendError)


_show_other_warning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning of joulecut's own reads as the command's; others (torch's, ...) keep Python's form."""
    from energy.errors import JoulecutWarning

    if issubclass(category, JoulecutWarning):
        print(f"joulecut: warning: {message}", file=sys.stderr)
    else:
        _show_other_warning(message, category, filename, lineno, file, line)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for option in ("batch", "jobs", "repeats", "threads", "epochs"):
        value = getattr(args, option, None)
        if value is not None and value < 1:
            parser.error(f"--{option} must be >= 1, got {value}")
    warnings.showwarning = _show_warning
    try:
        return args.func(args)
    except _usage_errors() as e:
        print(f"joulecut: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except _user_errors() as e:
        from energy.errors import OptionError

        for line in str(e).splitlines() or [type(e).__name__]:  # a spec error lists every problem
            print(f"joulecut: error: {line}", file=sys.stderr)
        return EXIT_USAGE if isinstance(e, OptionError) else EXIT_INPUT
    except KeyboardInterrupt:
        print("joulecut: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader (e.g. `| head`) went away: not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as e:  # an internal error: say so plainly, the traceback is for a bug report
        import traceback

        traceback.print_exc()
        print(f"joulecut: internal error ({type(e).__name__}): {e}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
