"""Command line of the aggregation server: ``python -m eqface.service`` (and ``eqface serve aggregator``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import MISSING, fields

from eqface.service.config import MiB, ServiceConfig, TritonConfig
from eqface.service.errors import ServiceError
from eqface.service.hygiene import AuditConfig, HygieneConfig, RetentionConfig
from eqface.service.limits import LimitsConfig
from eqface.service.secrets import store_url_with_password
from eqface.service.security.config import SecurityConfig

DESCRIPTION = """\
EQFace aggregation service (gRPC). Keeps one progressive quality-weighted template per subject (paper section 5.3,
Eq. 8-9) from streamed frames, durably, and identifies subjects 1:N against an enrolled gallery.

Feature mode (frames carry an embedding + quality) needs nothing else. Image mode (frames carry JPEG/PNG bytes)
needs Triton serving the EQFace models (--triton-url). Health checking (grpc.health.v1) is served without
authentication (also on a plaintext --health-port for Kubernetes probes); reflection only with --reflection; Prometheus
metrics are served on --metrics-port.

Callers are authenticated: TLS (--tls-cert, --tls-key) with client certificates (--tls-client-ca) and/or bearer JWTs
(--jwks or --jwt-public-key, --jwt-issuer, --jwt-audience). Every credential is a file path (or the environment
variable named in its help), never a secret on the command line. --insecure serves plaintext without authentication,
on a loopback --host only (add --insecure-any-host to bind another address).

SIGTERM/SIGINT stop gracefully: streams stop reading, every frame read is committed and answered, then the server
exits.

First frame of a subject: F_1 = f_1 whatever its quality. If that quality is <= s_th the template is provisional and
the first later frame with quality > s_th replaces it (--strict-first-frame keeps the paper's behaviour instead)."""


_TRITON_DEFAULTS = {f.name: f.default for f in fields(TritonConfig) if f.default is not MISSING}
_LIMITS_HELP = {
    "stream_inflight_frames": "frames of one stream read ahead of their answers",
    "stream_inflight_bytes": "MiB of one stream's frames read ahead of their answers",
    "connection_inflight_bytes": "MiB read ahead across the streams of one connection",
    "memory_budget_bytes": "MiB of frames in flight across all streams; above it messages are shed "
    "(RESOURCE_EXHAUSTED)",
    "max_streams": "streams open at once (health and unary calls are not counted)",
    "max_streams_per_tenant": "streams open at once per tenant",
    "max_streams_per_connection": "streams open at once per connection",
    "stream_idle_timeout_s": "seconds a stream may send nothing before it is closed; 0 never",
    "tenant_frames_per_s": "frames per second per tenant (token bucket; RESOURCE_EXHAUSTED with a retry hint)",
    "tenant_frames_burst": "frames a tenant may send at once above its rate",
    "tenant_streams_per_s": "stream openings per second per tenant",
    "tenant_streams_burst": "stream openings a tenant may make at once (a reconnect storm)",
    "keepalive_time_s": "seconds between the server's keepalive pings on an idle connection",
    "keepalive_timeout_s": "seconds a keepalive ping may go unanswered before the connection is closed",
    "max_connection_idle_s": "seconds a connection without calls stays open",
    "max_connection_age_s": "seconds after which a connection is closed (GOAWAY)",
    "max_connection_age_grace_s": "seconds the calls of an aged connection get to finish",
}


# Credential file paths may come from the environment (a Kubernetes Secret mounted as files, its paths in env).
ENV = {
    "tls_cert_file": "EQFACE_TLS_CERT",
    "tls_key_file": "EQFACE_TLS_KEY",
    "client_ca_file": "EQFACE_TLS_CLIENT_CA",
    "jwks_file": "EQFACE_JWKS",
}


def _mib(text: str) -> int:
    return int(float(text) * MiB)


def _milliseconds(text: str) -> float:
    return float(text) / 1000


def build_parser() -> argparse.ArgumentParser:
    """One flag per field of ``ServiceConfig`` and ``TritonConfig``: each flag's ``dest`` is the field's name
    (``triton_<field>`` for Triton's), so ``config_from_args`` builds the config by name and a test checks that no
    field lacks a flag."""
    defaults, triton = ServiceConfig(), _TRITON_DEFAULTS
    p = argparse.ArgumentParser(
        prog="python -m eqface.service",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    net = p.add_argument_group("network")
    net.add_argument("--host", default=defaults.host, help="gRPC listen address (default: %(default)s, all)")
    net.add_argument("--port", type=int, default=defaults.port, help="gRPC port; 0 picks a free one (%(default)s)")
    net.add_argument(
        "--metrics-port", type=int, default=defaults.metrics_port, help="Prometheus /metrics port; 0 disables it"
    )
    net.add_argument(
        "--max-message-mib",
        dest="max_message_bytes",
        type=_mib,
        default=defaults.max_message_bytes,
        help=f"largest gRPC message accepted or sent, in MiB; bigger ones fail RESOURCE_EXHAUSTED "
        f"({defaults.max_message_bytes / MiB:g})",
    )
    store = p.add_argument_group("state")
    store.add_argument(
        "--store",
        dest="store_url",
        default=defaults.store_url,
        help="where subject state and the gallery live: sqlite:///relative.db or sqlite:////abs/path.db "
        "(default %(default)s; add ?synchronous=normal to skip the per-commit fsync), or "
        "redis://host:port/db[?prefix=eqface:] for replicas sharing one Redis (its password: "
        "--store-password-file or the environment variable EQFACE_STORE_PASSWORD, never the command line)",
    )
    store.add_argument(
        "--store-password-file",
        help="file holding the store's password (e.g. a mounted Kubernetes Secret); EQFACE_STORE_PASSWORD otherwise",
    )
    store.add_argument(
        "--cache-subjects",
        type=int,
        default=defaults.cache_subjects,
        help="subjects kept decoded in RAM (LRU, ~2.5 KB each); the store holds all of them (%(default)s)",
    )
    store.add_argument(
        "--max-commit-frames",
        type=int,
        default=defaults.max_commit_frames,
        help="most frames applied in one group-commit transaction (%(default)s)",
    )
    agg = p.add_argument_group("aggregation (paper Eq. 8-9)")
    agg.add_argument(
        "--f-th",
        type=float,
        help="similarity gate f_th; overrides the served model's calibrated value (without both: the paper's 0.5)",
    )
    agg.add_argument(
        "--s-th",
        type=float,
        help="quality gate s_th; overrides the served model's calibrated value (without both: the paper's 0.3)",
    )
    agg.add_argument(
        "--strict-first-frame",
        dest="reseed_low_quality",
        action="store_false",
        help="never replace a low-quality first frame (the paper's F_1 = f_1 without the provisional seed)",
    )
    agg.add_argument(
        "--embedding-dim",
        type=int,
        default=defaults.embedding_dim,
        help="embedding size D; in image mode Triton's model must return the same (%(default)s)",
    )
    agg.add_argument("--top-k", type=int, default=defaults.top_k, help="gallery matches per answer (%(default)s)")
    agg.add_argument("--max-top-k", type=int, default=defaults.max_top_k, help="largest top_k a client may ask")
    limits = p.add_argument_group("limits")
    limits.add_argument(
        "--max-frames-per-message",
        type=int,
        default=defaults.max_frames_per_message,
        help="frames in one StreamFrames message (%(default)s)",
    )
    limits.add_argument("--max-image-bytes", type=int, default=defaults.max_image_bytes, help="bytes per encoded image")
    limits.add_argument(
        "--max-image-pixels", type=int, default=defaults.max_image_pixels, help="pixels per decoded image"
    )
    limits.add_argument(
        "--max-inflight-messages",
        type=int,
        default=defaults.max_inflight_messages,
        help="messages of one stream read ahead of their answer (%(default)s)",
    )
    limits.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        default=defaults.max_concurrent_rpcs,
        help="calls served at once, streams included; more get RESOURCE_EXHAUSTED (%(default)s)",
    )
    limits.add_argument(
        "--shutdown-grace",
        dest="shutdown_grace_s",
        type=float,
        default=defaults.shutdown_grace_s,
        help="seconds SIGTERM waits for streams (%(default)s)",
    )
    limits.add_argument(
        "--active-window",
        dest="active_window_s",
        type=float,
        default=defaults.active_window_s,
        help="seconds a subject counts as active after a frame (metric; %(default)s)",
    )
    _add_limits(p.add_argument_group("quotas and connections (see eqface/service/limits.py)"))
    tri = p.add_argument_group("image mode (Triton; the model's input size is read from Triton)")
    tri.add_argument("--triton-url", help="Triton gRPC host:port; without it only feature frames are accepted")
    tri.add_argument(
        "--triton-input",
        dest="triton_input_kind",
        choices=("bytes", "tensor"),
        default=triton["input_kind"],
        help="bytes: send encoded images to the ensemble model 'eqface'; tensor: decode here and call 'eqface_onnx'",
    )
    tri.add_argument(
        "--triton-max-batch", type=int, default=triton["max_batch"], help="images per Triton request (%(default)s)"
    )
    tri.add_argument(
        "--triton-max-wait-ms",
        dest="triton_max_wait_s",
        type=_milliseconds,
        default=triton["max_wait_s"],
        help=f"how long a micro-batch waits to fill, in ms ({triton['max_wait_s'] * 1000:g})",
    )
    tri.add_argument(
        "--triton-timeout",
        dest="triton_timeout_s",
        type=float,
        default=triton["timeout_s"],
        help="seconds per Triton request (%(default)s)",
    )
    tri.add_argument(
        "--triton-probe-interval",
        dest="triton_probe_interval_s",
        type=float,
        default=triton["probe_interval_s"],
        help="seconds between readiness checks (%(default)s)",
    )
    tri.add_argument(
        "--triton-max-concurrent-batches",
        type=int,
        default=triton["max_concurrent_batches"],
        help="Triton requests in flight at once (%(default)s)",
    )
    _add_hygiene_flags(p)
    _add_security_flags(p.add_argument_group("security (file paths; see the description)"))
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def _add_limits(group: argparse._ArgumentGroup) -> None:
    """One flag per ``LimitsConfig`` field, dest ``limits_<field>``: ``--memory-budget-mib``, ``--max-streams``,
    ``--stream-idle-timeout`` (a ``_bytes`` field takes MiB, an ``_s`` field seconds)."""
    defaults = LimitsConfig()
    for f in fields(LimitsConfig):
        default = getattr(defaults, f.name)
        name, kind, metavar, shown = f.name, type(default), "N", f"{default:g}"
        if name.endswith("_bytes"):
            name, kind, metavar, shown = name[: -len("_bytes")] + "_mib", _mib, "MIB", f"{default / MiB:g}"
        elif name.endswith("_s") and not name.endswith("_per_s"):
            name, metavar = name[: -len("_s")], "SECONDS"
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=f"limits_{f.name}",
            type=kind,
            default=default,
            metavar=metavar,
            help=f"{_LIMITS_HELP[f.name]} ({shown})",
        )


def _add_security_flags(sec: argparse._ArgumentGroup) -> None:
    """One flag per field of ``SecurityConfig``, dest ``security_<field>``."""
    d = SecurityConfig()

    def path(flag: str, field: str, what: str) -> None:
        env = ENV[field]
        sec.add_argument(flag, dest=f"security_{field}", default=os.environ.get(env), help=f"{what} (or ${env})")

    path("--tls-cert", "tls_cert_file", "the server's certificate chain, PEM file; turns TLS on")
    path("--tls-key", "tls_key_file", "the server's private key, PEM file")
    path("--tls-client-ca", "client_ca_file", "CA bundle, PEM file: client certificates required and verified by it")
    path("--jwks", "jwks_file", "JSON Web Key Set file of the token issuers' public keys: bearer tokens accepted")
    sec.add_argument(
        "--jwt-public-key",
        dest="security_jwt_public_key_files",
        action="append",
        default=[],
        help="a token issuer's PEM public key file (repeatable; with or instead of --jwks)",
    )
    sec.add_argument("--jwt-issuer", dest="security_jwt_issuer", help="the iss every token must carry")
    sec.add_argument("--jwt-audience", dest="security_jwt_audience", help="the aud every token must carry")
    sec.add_argument(
        "--jwt-algorithms",
        dest="security_jwt_algorithms",
        type=lambda text: tuple(a.strip() for a in text.split(",") if a.strip()),
        default=d.jwt_algorithms,
        help=f"accepted token signature algorithms, comma-separated ({','.join(d.jwt_algorithms)}; never none/HS*)",
    )
    sec.add_argument(
        "--jwt-leeway",
        dest="security_jwt_leeway_s",
        type=float,
        default=d.jwt_leeway_s,
        help="seconds of clock skew allowed on exp/nbf (%(default)s)",
    )
    sec.add_argument(
        "--insecure",
        dest="security_insecure",
        action="store_true",
        help="plaintext, no authentication: every caller is the default tenant with every role (loopback only)",
    )
    sec.add_argument(
        "--insecure-any-host",
        dest="security_insecure_any_host",
        action="store_true",
        help="with --insecure: allow a non-loopback --host (only on a network you trust)",
    )
    sec.add_argument(
        "--reflection", dest="security_reflection", action="store_true", help="serve gRPC server reflection (off)"
    )
    sec.add_argument(
        "--health-port",
        dest="security_health_port",
        type=int,
        default=d.health_port,
        help="plaintext port serving only grpc.health.v1 (Kubernetes gRPC probes cannot use TLS); 0: off",
    )


def _add_hygiene_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ``RetentionConfig``/``AuditConfig`` field, dest ``retention_<field>`` / ``audit_<field>``."""
    defaults = RetentionConfig()
    group = parser.add_argument_group("biometric data hygiene (retention, audit log)")
    group.add_argument(
        "--retention-days",
        dest="retention_subject_days",
        type=float,
        help="delete subjects (templates) not updated for this many days (default: keep)",
    )
    group.add_argument(
        "--identity-retention-days",
        dest="retention_identity_days",
        type=float,
        help="remove gallery identities not enrolled for this many days (default: keep)",
    )
    group.add_argument(
        "--retention-interval",
        dest="retention_interval_s",
        type=float,
        default=defaults.interval_s,
        help="seconds between retention sweeps (%(default)s; one also runs at start)",
    )
    group.add_argument(
        "--retention-batch",
        dest="retention_batch_size",
        type=int,
        default=defaults.batch_size,
        help="most records deleted per store call (%(default)s)",
    )
    group.add_argument(
        "--audit-log",
        dest="audit_path",
        help="append the audit log (JSON lines) to this file (default: the 'eqface.audit' logger)",
    )


# The nested configs: each field of one has a flag whose dest is "<prefix>_<field>" (a test checks every one).
FLAG_SECTIONS: dict[str, type] = {
    "triton": TritonConfig,
    "limits": LimitsConfig,
    "security": SecurityConfig,
    "retention": RetentionConfig,
    "audit": AuditConfig,
}


def _section(values: dict, prefix: str) -> object:
    """The nested config ``FLAG_SECTIONS[prefix]`` from its flags' values."""
    cls = FLAG_SECTIONS[prefix]
    return cls(**{f.name: values[f"{prefix}_{f.name}"] for f in fields(cls)})


def config_from_args(args: argparse.Namespace) -> ServiceConfig:
    """The config from the parsed flags, field by field (see ``build_parser``), and the store's password from
    ``--store-password-file`` or ``EQFACE_STORE_PASSWORD`` (``eqface.service.secrets``)."""
    values = dict(vars(args), security_jwt_public_key_files=tuple(args.security_jwt_public_key_files))
    values["store_url"] = store_url_with_password(values["store_url"], values["store_password_file"])
    nested = {
        "triton": _section(values, "triton") if values["triton_url"] else None,
        "limits": _section(values, "limits"),
        "security": _section(values, "security"),
        "hygiene": HygieneConfig(_section(values, "retention"), _section(values, "audit")),
    }
    return ServiceConfig(**nested, **{f.name: values[f.name] for f in fields(ServiceConfig) if f.name not in nested})


async def serve(config: ServiceConfig) -> None:
    """Runs the server until SIGTERM or SIGINT, then stops it gracefully."""
    from eqface.service.server import AggregatorServer  # grpc is imported only when serving

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before serving: a signal during start-up stops right after it
        loop.add_signal_handler(sig, stop.set)
    server = AggregatorServer(config)
    await server.start()
    await stop.wait()
    logging.getLogger(__name__).info("signal received: draining")
    await server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
        config.security.check_serving(config.host)
    except ValueError as exc:
        parser.error(str(exc))
    from eqface.service.store import StoreUnavailable

    try:
        asyncio.run(serve(config))
    # port taken, store unreachable, bad URL, a served model that disagrees with the config
    except (OSError, RuntimeError, ValueError, StoreUnavailable, ServiceError) as exc:
        print(f"eqface aggregator: {exc}", file=sys.stderr)
        return 1
    return 0
