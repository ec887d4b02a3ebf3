"""``eqface serve``: write a Triton model repository, and run the Triton server bundled in nvidia-pytriton."""

from __future__ import annotations

import argparse
import signal
import tempfile
import time
from pathlib import Path

from eqface import contract
from eqface.cli.quantize_cmd import add_quantization_options
from eqface.serving.model_configs import DEFAULT_BATCHING

_DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}  # Triton's own defaults


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serving: Triton model repository and server, the aggregation service",
        description="Serving the exported model on Triton Inference Server, and the streaming "
        "aggregation service in front of it.",
    )
    serve = p.add_subparsers(dest="serve_command", required=True, metavar="SUBCOMMAND")
    _add_repository_parser(serve)
    _add_triton_parser(serve)
    _add_aggregator_parser(serve)


def _add_aggregator_parser(serve: argparse._SubParsersAction) -> None:
    p = serve.add_parser(
        "aggregator",
        add_help=False,
        help="run the gRPC aggregation service (progressive QWFA per subject; see `eqface serve aggregator --help`)",
        description="The streaming aggregation service; every option is the service's own (python -m eqface.service).",
    )
    # Every option is handed on unparsed (eqface.cli.main collects them), e.g. --store sqlite:///state.db.
    p.set_defaults(func=run_aggregator, service_args=[])


def run_aggregator(args: argparse.Namespace) -> int:
    from eqface.service.cli import main as service_main

    return service_main(args.service_args)


def _add_repository_parser(serve: argparse._SubParsersAction) -> None:
    p = serve.add_parser(
        "repository",
        help="write config.pbtxt files and a version folder for an exported ONNX model",
        description="Writes the models eqface_onnx, preprocess and the ensemble eqface. With MODEL_ONNX, also "
        "writes version --version of each (the ONNX file is checked against the contract first); without it, "
        "writes only the configs for --image-size/--embedding-size.",
    )
    p.add_argument("onnx", type=Path, nargs="?", metavar="MODEL_ONNX", help="file written by `eqface export`")
    p.add_argument("--out", type=Path, required=True, help="model repository folder")
    p.add_argument(
        "--variant",
        choices=("local", "production"),
        default="local",
        help="local: python backend on CPU (the bundled server); production: onnxruntime on GPU",
    )
    p.add_argument(
        "--precision",
        choices=contract.PRECISIONS,
        help="precision to serve (default: the file's own). int8 with an fp32 MODEL_ONNX quantizes it first "
        "(`eqface quantize`, options below); int8 runs on CPU instances in both variants",
    )
    p.add_argument("--version", type=int, default=1, help="version folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing version folder")
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=DEFAULT_BATCHING.max_batch_size,
        help="largest batch Triton accepts per request/execution",
    )
    p.add_argument(
        "--preferred-batch-sizes",
        type=int,
        nargs="*",
        default=list(DEFAULT_BATCHING.preferred_batch_sizes),
        help="batch sizes the dynamic batcher tries to form (none: Triton's plain dynamic_batching {}, which "
        "bench/bench_triton.py measured as good or better; serving/README.md)",
    )
    p.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=DEFAULT_BATCHING.max_queue_delay_us,
        help="dynamic batching queue delay",
    )
    p.add_argument(
        "--tensorrt-fp16",
        action="store_true",
        help="production variant: run eqface_onnx through onnxruntime's TensorRT execution provider at FP16",
    )
    p.add_argument("--no-dynamic-batching", action="store_true", help="run every request on its own")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: all cores)")
    p.add_argument(
        "--spinning",
        action="store_true",
        help="local variant: let idle onnxruntime threads busy-wait (faster only on otherwise idle cores)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        default=list(contract.DEFAULT_IMAGE_SIZE),
        metavar=("H", "W"),
        help="without MODEL_ONNX: input size the configs declare",
    )
    p.add_argument(
        "--embedding-size",
        type=int,
        default=contract.DEFAULT_EMBEDDING_SIZE,
        help="without MODEL_ONNX: embedding size the configs declare",
    )
    add_quantization_options(p)
    p.set_defaults(func=run_repository)


def _add_triton_parser(serve: argparse._SubParsersAction) -> None:
    p = serve.add_parser(
        "triton",
        help="run the Triton server from the nvidia-pytriton wheel until Ctrl-C/SIGTERM",
        description="Starts tritonserver on --model-repository, waits until every model is ready, prints the "
        "endpoints and serves until Ctrl-C or SIGTERM, then shuts down cleanly (in-flight requests finish).",
    )
    p.add_argument("--model-repository", type=Path, required=True, help="folder written by `eqface serve repository`")
    for name, port in _DEFAULT_PORTS.items():
        p.add_argument(f"--{name}-port", type=int, default=port, help=f"{name} port (0: any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    p.add_argument(
        "--model-control-mode",
        choices=("none", "poll", "explicit"),
        default="none",
        help="none: load everything at start; poll: also reload changed models; explicit: load only "
        "--load-model at start, then what clients load through the model-control API",
    )
    p.add_argument(
        "--load-model",
        action="append",
        default=[],
        metavar="NAME",
        help="explicit mode: model to load at start (repeatable; '*' loads all)",
    )
    p.add_argument("--log-verbose", type=int, default=0, help="Triton's log verbosity")
    p.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for readiness")
    p.add_argument(
        "--control-key-file",
        metavar="PATH",
        help="restrict model control (load/unload, repository index, shared memory, trace, logging) to callers "
        "sending the key in this file (default: $EQFACE_TRITON_CONTROL_KEY_FILE, else $EQFACE_TRITON_CONTROL_KEY, "
        "else open); the deploy step reads the same variables",
    )
    p.set_defaults(func=run_triton)


def run_repository(args: argparse.Namespace) -> int:
    from eqface.contract import InferenceSpec
    from eqface.serving.model_configs import Batching, OnnxRuntimeSettings
    from eqface.serving.repository import write_configs, write_model_repository

    batching = Batching(
        max_batch_size=args.max_batch_size,
        dynamic=not args.no_dynamic_batching,
        preferred_batch_sizes=tuple(args.preferred_batch_sizes),
        max_queue_delay_us=args.max_queue_delay_us,
    )
    runtime = OnnxRuntimeSettings(threads=args.threads, spinning=args.spinning, tensorrt_fp16=args.tensorrt_fp16)
    if args.onnx is None:
        spec = InferenceSpec(image_size=tuple(args.image_size), embedding_size=args.embedding_size)
        precision = args.precision or "fp32"
        for path in write_configs(args.out, spec, args.variant, batching, runtime, precision=precision).values():
            print(f"wrote {path}")
        return 0
    with tempfile.TemporaryDirectory(prefix="eqface-int8-") as tmp:
        onnx_path = _served_file(args, Path(tmp))
        repo = write_model_repository(
            onnx_path,
            args.out,
            variant=args.variant,
            version=args.version,
            batching=batching,
            runtime=runtime,
            overwrite=args.overwrite,
            precision=args.precision,
        )
    h, w = repo.spec.image_size
    print(
        f"wrote {args.variant} {repo.precision} model repository {repo.root} (version {repo.version}; "
        f"input [N, 3, {h}, {w}], embedding [N, {repo.spec.embedding_size}])"
    )
    for model in (contract.ENSEMBLE_MODEL_NAME, contract.PREPROCESS_MODEL_NAME, contract.ONNX_MODEL_NAME):
        print(f"  {repo.version_dir(model)}")
    return 0


def _served_file(args: argparse.Namespace, tmp: Path) -> Path:
    """MODEL_ONNX, or its int8 variant quantized into ``tmp`` when --precision int8 is asked of an fp32 file."""
    from eqface.cli.quantize_cmd import quantize_from_args
    from eqface.export.quantize import INT8, model_precision

    if args.precision != INT8 or not args.onnx.is_file() or model_precision(args.onnx) == INT8:
        return args.onnx
    return quantize_from_args(args.onnx, tmp / "model.int8.onnx", args).path


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run_triton(args: argparse.Namespace) -> int:
    from eqface.serving import control
    from eqface.serving.launcher import TritonServer

    server = TritonServer(
        args.model_repository,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        host=args.host,
        model_control_mode=args.model_control_mode,
        load_models=args.load_model,
        log_verbose=args.log_verbose,
        startup_timeout_s=args.startup_timeout,
        control_key=control.read_key(args.control_key_file),
    )
    # SIGTERM (docker stop, kubectl delete) takes the same path as Ctrl-C: stop the server, exit 0.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        server.start()
        _print_endpoints(server)
        while server.is_running():
            time.sleep(0.5)
        log_tail = server.logs()[-4000:]
        code = server.stop()
        raise RuntimeError(f"tritonserver exited on its own with status {code}; its log ends:\n{log_tail}")
    except KeyboardInterrupt:
        print("stopping tritonserver …", flush=True)
        code = server.stop()
        print(f"tritonserver stopped (exit status {code})", flush=True)
        return 0
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)


def _print_endpoints(server) -> None:
    ready = sorted(f"{m['name']} v{m['version']}" for m in server.models() if m.get("state") == "READY")
    print(f"tritonserver ready (pid {server.pid}), model repository {server.model_repository}", flush=True)
    print(f"  models   {', '.join(ready) or '(none loaded)'}")
    print(f"  gRPC     {server.grpc_url}")
    print(f"  HTTP     http://{server.http_url}")
    print(f"  metrics  {server.metrics_url}")
    print(f"  model control {'restricted to the control key' if server.control_key else 'OPEN to every caller'}")
    print("Ctrl-C or SIGTERM stops the server.", flush=True)
