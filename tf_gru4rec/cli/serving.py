"""CLI subcommands `export`, `serve` and `replay` (registered by `tf_gru4rec.cli`).

TensorFlow and the serving modules are imported only when a subcommand runs.
"""

from __future__ import annotations

import argparse
import logging
import os

from tf_gru4rec.cli import types

logger = logging.getLogger("tf_gru4rec")


def cmd_export(args) -> int:
    from tf_gru4rec.cli.common import json_out
    from tf_gru4rec.extras import require

    if not args.no_warmup:
        require("export (its warmup requests; or give --no-warmup)", "tensorflow_serving")

    if args.version is not None and os.path.lexists(os.path.join(args.base, str(args.version))):
        # before loading TensorFlow; export_model checks again when it renames
        logger.error("Version %s already exists in %s: give another --version, or none for the "
                     "next free one", args.version, os.path.abspath(args.base))
        return 2
    from tf_gru4rec.paths import check_model_dir, check_output_dir
    from tf_gru4rec.serving.export import export_model
    from tf_gru4rec.serving.graph.limits import ServingLimits
    from tf_gru4rec.training.model_dir import load_model_dir

    check_model_dir(args.model)
    check_output_dir(args.base, "--base")
    trained = load_model_dir(args.model)
    try:
        path = export_model(
            trained.model, trained.vocabulary, args.base, version=args.version, k=args.k,
            exclude_seen=args.exclude_seen, session_capacity=args.session_capacity,
            session_idle_seconds=args.session_idle_seconds, max_seen=args.max_seen,
            popular_items=args.popular_items, warmup=not args.no_warmup,
            limits=ServingLimits(max_request_rows=args.max_request_rows,
                                 max_id_bytes=args.max_id_bytes,
                                 max_session_length=args.max_session_length,
                                 session_memory_bytes=args.session_memory_mb << 20,
                                 request_work=args.request_work,
                                 scoring_memory_bytes=args.scoring_memory_mb << 20),
            score_precision=args.score_precision, score_shards=args.score_shards)
    except FileExistsError as error:  # an explicit --version that exists
        logger.error("%s", error)
        return 2
    except ValueError as error:  # an option out of range (k, limits, popular items, ...)
        logger.error("cannot export: %s", error)
        return 2
    except OSError as error:  # e.g. a base path that is read-only, or a full disk
        logger.error("cannot export to %s: %s", args.base, error)
        return 2
    json_out({"export": path, "k": args.k, "exclude_seen": args.exclude_seen})
    return 0


def cmd_serve(args) -> int:
    from tf_gru4rec.extras import require

    require("serve", "grpc", "tensorflow_serving")
    from tf_gru4rec.serving.dev_server import DevServer

    if not os.path.isdir(args.base):
        raise ValueError(f"--base {args.base!r} is not a directory; expected a model base path "
                         "with numbered SavedModel versions (tf-gru4rec export)")
    server = DevServer(args.base, model_name=args.model_name, host=args.host, port=args.port,
                       rest_port=args.rest_port, max_workers=args.workers,
                       poll_seconds=args.poll_seconds or None, warmup=not args.no_warmup)
    try:
        server.start()
    except (OSError, RuntimeError) as error:
        server.stop(0)
        raise OSError(f"cannot start the server on {args.host}:{args.port}: {error}") from None
    logger.info("serving until interrupted (Ctrl-C); this is a development stand-in for "
                "TensorFlow Serving")
    server.wait()
    return 0


def cmd_replay(args) -> int:
    from tf_gru4rec.extras import require

    require("replay", "grpc", "tensorflow_serving")
    from tf_gru4rec.cli.common import results_out
    from tf_gru4rec.cli.types import fail
    from tf_gru4rec.paths import check_input_file
    from tf_gru4rec.serving.client import ServingError
    from tf_gru4rec.serving.replay import replay

    check_input_file(args.test, "--test")

    read_options = {"session_col": args.session_col, "item_col": args.item_col,
                    "time_col": args.time_col, "fmt": args.format}
    try:
        result = replay(args.target, args.test, model_name=args.model_name,
                        cutoffs=args.cutoffs, tie_mode=args.tie_mode,
                        batch_size=args.batch_size, timeout=args.timeout,
                        read_options=read_options, wait=args.wait)
    except ServingError as error:
        fail("replay", f"the server at {args.target} failed: {error}")
        return 3
    results_out({f"served ({args.target})": result} if not args.json else result, args.json)
    return 0


def _popular(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def register(subparsers: argparse._SubParsersAction) -> None:
    from tf_gru4rec.cli.common import add_json_option, add_read_options

    p = subparsers.add_parser(
        "export", help="write a TF Serving SavedModel version of a trained model")
    p.add_argument("--model", required=True, help="trained model directory")
    p.add_argument("--base", default="export/gru4rec",
                   help="model base path; the new version goes to BASE/<version>/")
    p.add_argument("--version", type=types.integer(0), help="version number (default: latest + 1)")
    p.add_argument("--k", type=types.integer(1), default=20, help="recommendations per request")
    p.add_argument("--exclude-seen", action="store_true",
                   help="never recommend items already clicked in the session")
    p.add_argument("--max-seen", type=types.integer(1), default=100,
                   help="clicked items remembered per session for --exclude-seen")
    p.add_argument("--session-capacity", type=types.integer(1), default=100_000,
                   help="most sessions kept by the stateful signature")
    p.add_argument("--session-idle-seconds", type=types.number(0, low_open=True),
                   default=1800.0,
                   help="a session idle longer than this starts over")
    p.add_argument("--popular-items", type=_popular,
                   help="comma-separated fallback item ids, most popular first "
                        "(default: by training counts)")
    p.add_argument("--max-request-rows", type=types.integer(1), default=None,
                   help="most rows in one request (checked inside the graph; default: "
                        "--request-work / items, between 1 and 10,000)")
    p.add_argument("--request-work", type=types.integer(1), default=50_000_000,
                   help="item rows x request rows one request may score; sets the default "
                        "--max-request-rows")
    p.add_argument("--scoring-memory-mb", type=types.integer(1), default=128,
                   help="most memory of score matrices one request holds at a time (requests "
                        "are scored in row chunks that fit)")
    p.add_argument("--max-id-bytes", type=types.integer(1), default=256,
                   help="longest session id in bytes (checked inside the graph)")
    p.add_argument("--max-session-length", type=types.integer(1), default=1000,
                   help="most items per session in `recommend` and `step`'s seen items")
    p.add_argument("--session-memory-mb", type=types.integer(1), default=1024,
                   help="memory budget of the session tables; lowers --session-capacity to "
                        "fit the worst case")
    p.add_argument("--score-precision", default="float32",
                   choices=["float32", "bfloat16", "int8"],
                   help="precision of the item table that scores all items (float32: exact)")
    p.add_argument("--score-shards", type=types.integer(1), default=2,
                   help="row blocks of the item table scored in parallel (same results; "
                        "about the number of cores a request may use)")
    p.add_argument("--no-warmup", action="store_true", help="write no warmup requests")
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser(
        "serve", help="development gRPC/REST server (a stand-in for TensorFlow Serving)")
    p.add_argument("--base", default="export/gru4rec", help="model base path")
    p.add_argument("--model-name", default="gru4rec", type=types.name)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind")
    p.add_argument("--port", type=types.integer(0, 65535), default=8500, help="gRPC port")
    p.add_argument("--rest-port", type=types.integer(0, 65535),
                   help="REST port (default: no REST endpoint)")
    p.add_argument("--workers", type=types.integer(1), default=8, help="gRPC worker threads")
    p.add_argument("--poll-seconds", type=types.number(0), default=0.0,
                   help="load new versions as they appear, checking this often (0: never)")
    p.add_argument("--no-warmup", action="store_true", help="skip the warmup requests")
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser(
        "replay", help="Recall@K / MRR@K of a served model by replaying a test log through it")
    p.add_argument("--target", required=True, type=types.host_port,
                   help="gRPC HOST:PORT of the server")
    p.add_argument("--test", required=True, help="test click log")
    p.add_argument("--model-name", default="gru4rec", type=types.name)
    p.add_argument("--cutoffs", type=types.integer(1), nargs="+", default=[1, 5, 10, 20])
    p.add_argument("--tie-mode", default="conservative",
                   choices=["standard", "conservative", "median"])
    p.add_argument("--batch-size", type=types.integer(1), default=None,
                   help="session-parallel slots per request (as `evaluate --batch-size`)")
    p.add_argument("--timeout", type=types.number(0, low_open=True), default=30.0,
                   help="seconds per request")
    p.add_argument("--wait", type=types.number(0), default=120.0,
                   help="seconds to wait for a server that is still starting or loading the "
                        "model, e.g. just started with `serve &` (default: 120; 0: no wait)")
    add_json_option(p)
    add_read_options(p)
    p.set_defaults(func=cmd_replay)
