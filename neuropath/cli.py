"""The ``neuropath`` command line: thin wrappers that parse and call the library.

Subcommands: ``train``, ``evaluate``, ``compare``, ``predict``, ``explain``,
``gradcheck``, ``figures``, ``gradients`` and ``check-data``. Errors a user can
fix are printed as one line and exit with status 2; a run whose training
diverged exits with status 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

__all__ = [
    "main",
    "train_main",
    "evaluate_main",
    "predict_main",
    "explain_main",
    "gradcheck_main",
    "gradients_main",
]

EXIT_USAGE = 2


def _quiet_tensorflow() -> None:
    # TensorFlow's C++ start-up chatter hides the messages users need.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (required unless --resume)")
    parser.add_argument("--data-dir", help="data set folder (overrides data.data_dir)")
    parser.add_argument("--run-dir", help="run folder (default runs/<name>-<time>)")
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a stopped run from its last completed epoch",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse to train if any file is unusable (data.strict=true)",
    )
    parser.add_argument(
        "--allow-cross-split-duplicates",
        action="store_true",
        help="split near-duplicate images one by one "
        "(data.allow_cross_split_duplicates=true)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides such as train.batch_size=16 model.weights=null",
    )


def _add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", nargs="?", help="a run folder from 'train'")
    parser.add_argument("--model", help="a .keras model (instead of RUN_DIR)")
    parser.add_argument("--data", help="data set folder, with --model")
    parser.add_argument("--manifest", help="split manifest CSV; its test rows are used")
    parser.add_argument("--out", help="report folder (default RUN_DIR/evaluation)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="bootstrap resamples for the 95%% intervals (default 1000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def _add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("report_a", help="a report folder (or its report.json)")
    parser.add_argument("report_b", help="the report to compare with it")


def _add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a .keras model saved by neuropath")
    parser.add_argument(
        "inputs",
        nargs="+",
        help="image or DICOM files, folders, or quoted glob patterns",
    )
    parser.add_argument("--out", required=True, help="the CSV file to write")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="hide the progress bar (hidden anyway when output is not a terminal)",
    )


def _add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a .keras model saved by neuropath")
    parser.add_argument(
        "inputs",
        nargs="+",
        help="image or DICOM files, folders, or quoted glob patterns",
    )
    parser.add_argument("--out", required=True, help="folder for the PNGs and page")
    parser.add_argument(
        "--class",
        dest="class_name",
        metavar="NAME",
        help="class to explain, full or short name (default: the predicted one)",
    )
    parser.add_argument(
        "--layer", help="backbone layer to explain (default: its last 4-D layer)"
    )
    parser.add_argument(
        "--alpha", type=float, default=0.4, help="heat map opacity, 0-1 (0.4)"
    )
    parser.add_argument(
        "--sanity",
        action="store_true",
        help="also run the model-randomisation check of the heat maps",
    )
    parser.add_argument("--batch-size", type=int, default=32)


def _add_gradcheck_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", nargs="?", help="a run folder from 'train'")
    parser.add_argument("--model", help="a .keras model (instead of RUN_DIR)")
    parser.add_argument("--data", help="data set folder: with --model, or moved data")
    parser.add_argument("--images", type=int, default=16, help="probe batch size")
    parser.add_argument(
        "--eps", type=float, default=1e-4, help="central difference step"
    )
    parser.add_argument(
        "--max-entries", type=int, default=200, help="entries checked per tensor"
    )
    parser.add_argument(
        "--numeric-tolerance",
        type=float,
        default=1e-5,
        help="largest relative error, central differences vs analytic (float64)",
    )
    parser.add_argument(
        "--tf-tolerance",
        type=float,
        default=1e-4,
        help="largest relative error, NumPy vs TensorFlow (float32)",
    )
    parser.add_argument("--seed", type=int, default=0, help="probe and entry sample")


def _add_figures_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="folder for the PNG figures")
    # dest differs from "run", which holds the subcommand's function.
    parser.add_argument(
        "--run", dest="run_dir", help="a run folder whose gradient logs to plot"
    )


def _add_gradients_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run folder from 'train'")


def _add_check_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_dir", help="a data set folder, one sub-folder per class")
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 if any problem"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead")


def _run_train(args: argparse.Namespace) -> int:
    from neuropath.config import load_config
    from neuropath.training import resume, train

    if args.resume:
        if args.config or args.overrides or args.data_dir or args.run_dir:
            raise ValueError(
                "--resume RUN_DIR continues with the run's own config.yaml; drop "
                "--config, --data-dir, --run-dir and KEY=VALUE overrides."
            )
        result = resume(args.resume)
    else:
        if not args.config:
            raise ValueError(
                "train needs --config FILE (or --resume RUN_DIR to continue a run)."
            )
        overrides = list(args.overrides)
        if args.data_dir:
            overrides.append(f"data.data_dir={args.data_dir}")
        if args.strict:
            overrides.append("data.strict=true")
        if args.allow_cross_split_duplicates:
            overrides.append("data.allow_cross_split_duplicates=true")
        config = load_config(args.config, overrides)
        result = train(config, args.run_dir)
    print()
    if result.test_accuracy is not None:
        print(f"test accuracy: {result.test_accuracy:.4f}")
    else:
        print("test accuracy: n/a (empty test split)")
    print(f"model: {result.model_path}")
    print(f"run folder: {result.run_dir}")
    if result.report is not None:
        print(f"report: {result.run_dir / 'evaluation' / 'report.json'}")
    print(f"minutes: {result.minutes:.1f}")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from neuropath.evaluation import evaluate_model, evaluate_run

    options = {
        "batch_size": args.batch_size,
        "n_resamples": args.bootstrap,
        "seed": args.seed,
    }
    if args.run_dir and not args.model:
        report, out = evaluate_run(args.run_dir, args.out, args.data, **options)
    elif args.model and args.data and not args.run_dir:
        out = args.out or "evaluation"
        report, out = evaluate_model(
            args.model, args.data, out, args.manifest, **options
        )
    else:
        raise ValueError(
            "evaluate needs either RUN_DIR, or --model M.keras --data DIR "
            "[--manifest CSV]."
        )
    low, high = report["confidence_intervals"]["accuracy"]
    print(
        f"accuracy: {report['accuracy']:.4f} on {report['n_images']} images "
        f"(95% CI {low:.4f} to {high:.4f})"
    )
    print(f"report: {out / 'report.json'}")
    print(f"page: {out / 'report.html'}")
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    from neuropath.comparison import (
        compare_reports,
        format_comparison,
        load_report,
        shared_images,
    )

    a, b = load_report(args.report_a), load_report(args.report_b)
    print(f"A: {args.report_a}")
    print(f"B: {args.report_b}")
    print(shared_images(a, b))
    print()
    print(format_comparison(compare_reports(a, b)))
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    from neuropath.classes import short_name
    from neuropath.prediction import predict_to_csv, predicted_class_counts

    predictions, class_names = predict_to_csv(
        args.model,
        args.inputs,
        args.out,
        args.batch_size,
        # A progress bar in a redirected output is only escape codes.
        progress=not args.no_progress and sys.stdout.isatty(),
    )
    failed = sum(1 for p in predictions if p.error)
    print(f"predicted {len(predictions) - failed} of {len(predictions)} file(s)")
    for name, count in predicted_class_counts(predictions, class_names).items():
        print(f"  {short_name(name):<18} {count:>5}")
    if failed:
        print(f"unreadable: {failed} (see the error column)")
    print(f"predictions: {args.out}")
    return 0


def _run_explain(args: argparse.Namespace) -> int:
    from neuropath.explanation import explain_files

    explanations, sanity = explain_files(
        args.model,
        args.inputs,
        args.out,
        class_name=args.class_name,
        layer=args.layer,
        alpha=args.alpha,
        sanity=args.sanity,
        batch_size=args.batch_size,
    )
    failed = sum(1 for e in explanations if e.error)
    print(f"explained {len(explanations) - failed} of {len(explanations)} file(s)")
    if failed:
        print(f"unreadable: {failed} (listed on the page)")
    if sanity is not None:
        for item in explanations:
            if item.correlation is not None:
                print(f"  rank correlation {item.correlation:+.2f}  {item.path}")
        print(
            f"randomisation check {sanity.verdict}: mean rank correlation "
            f"{sanity.mean:.2f} (threshold {sanity.threshold:.2f})"
        )
    print(f"page: {os.path.join(args.out, 'index.html')}")
    # A failed check is a result scripts must see, like a failed test.
    return 1 if sanity is not None and not sanity.passed else 0


def _run_gradcheck(args: argparse.Namespace) -> int:
    from neuropath.gradcheck import format_table, gradcheck_model, gradcheck_run

    options = {
        "n_images": args.images,
        "eps": args.eps,
        "max_entries": args.max_entries,
        "seed": args.seed,
    }
    if args.run_dir and not args.model:
        result = gradcheck_run(args.run_dir, data_dir=args.data, **options)
    elif args.model and args.data and not args.run_dir:
        result = gradcheck_model(args.model, args.data, **options)
    else:
        raise ValueError(
            "gradcheck needs either RUN_DIR [--data DIR], or --model M.keras "
            "--data DIR."
        )
    tolerances = (args.numeric_tolerance, args.tf_tolerance)
    print(format_table(result, *tolerances))
    passed = result.passed(*tolerances)
    print("gradients agree" if passed else "gradient check FAILED")
    return 0 if passed else 1


def _run_figures(args: argparse.Namespace) -> int:
    from neuropath.theory_figures import render_figures

    written, skipped = render_figures(args.out, args.run_dir)
    for path in written:
        print(f"figure: {path}")
    for reason in skipped:
        print(f"skipped: {reason}")
    return 0


def _run_gradients(args: argparse.Namespace) -> int:
    from neuropath.gradient_logging import format_gradient_table, read_gradient_table

    rows = read_gradient_table(args.run_dir)
    print(format_gradient_table(rows))
    flagged = sorted({row.layer for row in rows if row.flag})
    if flagged:
        print(f"alarms in {len(flagged)} layer(s): {', '.join(flagged)}")
    else:
        print("no gradient alarms")
    return 0


def _run_check_data(args: argparse.Namespace) -> int:
    from neuropath.data_check import (
        check_data,
        format_data_check,
        format_data_check_json,
    )

    # The table says what the scan's log lines would: keep the output to it.
    logging.getLogger("neuropath.dataset").setLevel(logging.ERROR)
    check = check_data(args.data_dir)
    print(format_data_check_json(check) if args.json else format_data_check(check))
    return 1 if args.strict and check.problems() else 0


def _dispatch(run, args: argparse.Namespace) -> int:
    from neuropath.divergence import TrainingDivergedError
    from neuropathology_model import ImageNetWeightsUnavailableError, ModelFileError

    _setup_logging(getattr(args, "verbose", False))
    try:
        return run(args)
    except TrainingDivergedError as err:
        print(f"neuropath: {err}", file=sys.stderr)
        return 1
    except (
        ValueError,
        FileNotFoundError,
        FileExistsError,
        ImageNetWeightsUnavailableError,
        ModelFileError,
    ) as err:
        print(f"neuropath: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("neuropath: interrupted", file=sys.stderr)
        return 130


_SUBCOMMANDS = (
    ("train", "train a model into a run folder", _add_train_arguments, _run_train),
    ("evaluate", "evaluate a trained model", _add_evaluate_arguments, _run_evaluate),
    (
        "compare",
        "compare the metrics of two evaluation reports",
        _add_compare_arguments,
        _run_compare,
    ),
    (
        "predict",
        "predict image or DICOM files into a CSV file",
        _add_predict_arguments,
        _run_predict,
    ),
    (
        "explain",
        "draw Grad-CAM heat maps of image or DICOM files",
        _add_explain_arguments,
        _run_explain,
    ),
    (
        "gradcheck",
        "check the head's gradients on a probe batch",
        _add_gradcheck_arguments,
        _run_gradcheck,
    ),
    (
        "figures",
        "draw the backpropagation figures",
        _add_figures_arguments,
        _run_figures,
    ),
    (
        "gradients",
        "tabulate a run's logged gradient norms and alarms",
        _add_gradients_arguments,
        _run_gradients,
    ),
    (
        "check-data",
        "list a data folder's images per class, unusable files and duplicates",
        _add_check_data_arguments,
        _run_check_data,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    """The ``neuropath`` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="neuropath",
        description="Train and evaluate a 17-class brain MRI slice classifier.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text, add_arguments, run in _SUBCOMMANDS:
        subcommand = commands.add_parser(name, help=help_text)
        add_arguments(subcommand)
        subcommand.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``neuropath`` command."""
    _quiet_tensorflow()
    args = build_parser().parse_args(argv)
    return _dispatch(args.run, args)


def train_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``scripts/train.py``: ``neuropath train`` by another name."""
    return main(["train", *(sys.argv[1:] if argv is None else argv)])


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``scripts/evaluate.py``: ``neuropath evaluate``."""
    return main(["evaluate", *(sys.argv[1:] if argv is None else argv)])


def predict_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``scripts/predict.py``: ``neuropath predict``."""
    return main(["predict", *(sys.argv[1:] if argv is None else argv)])


def explain_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``scripts/explain.py``: ``neuropath explain``."""
    return main(["explain", *(sys.argv[1:] if argv is None else argv)])


def gradcheck_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``scripts/gradcheck.py``: ``neuropath gradcheck``."""
    return main(["gradcheck", *(sys.argv[1:] if argv is None else argv)])


def gradients_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``scripts/gradients.py``: ``neuropath gradients``."""
    return main(["gradients", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
