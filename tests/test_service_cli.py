"""Command line of the aggregation server: arguments become one validated ServiceConfig."""

from __future__ import annotations

from dataclasses import fields

import pytest

from eqface.service.cli import FLAG_SECTIONS, build_parser, config_from_args, main
from eqface.service.config import MiB, ServiceConfig, TritonConfig
from eqface.service.hygiene import AuditConfig, HygieneConfig, RetentionConfig
from eqface.service.limits import LimitsConfig
from eqface.service.security.config import SecurityConfig


def _config(*argv: str) -> ServiceConfig:
    return config_from_args(build_parser().parse_args(list(argv)))


def test_defaults_are_the_config_defaults():
    assert _config() == ServiceConfig()


def test_every_config_field_has_a_flag_with_help():
    """config_from_args builds the config by field name from each flag's dest: a new field needs its flag."""
    actions = {action.dest: action for action in build_parser()._actions if action.option_strings}
    nested = ("triton", "hygiene", "limits", "security")
    wanted = {f.name for f in fields(ServiceConfig) if f.name not in nested}
    wanted |= {f"{prefix}_{f.name}" for prefix, cls in FLAG_SECTIONS.items() for f in fields(cls)}
    assert {"triton", "limits", "security", "retention", "audit"} <= FLAG_SECTIONS.keys()
    assert wanted <= actions.keys(), f"fields without a flag: {sorted(wanted - actions.keys())}"
    for dest in wanted:
        assert actions[dest].help and len(actions[dest].help) > 10, dest
    assert set(actions) - wanted == {"help", "log_level", "store_password_file"}  # the others are config fields


def test_triton_defaults_are_the_config_defaults():
    config = _config("--triton-url", "triton:8001")
    assert config.triton == TritonConfig(url="triton:8001")
    assert config == ServiceConfig(triton=TritonConfig(url="triton:8001"))


def test_every_option_reaches_the_config():
    config = _config(
        "--host",
        "127.0.0.1",
        "--port",
        "6000",
        "--metrics-port",
        "0",
        "--store",
        "redis://h:6379/2?prefix=x:",
        "--f-th",
        "0.6",
        "--s-th",
        "0.2",
        "--strict-first-frame",
        "--embedding-dim",
        "128",
        "--top-k",
        "3",
        "--max-top-k",
        "20",
        "--max-message-mib",
        "2",
        "--max-frames-per-message",
        "64",
        "--max-image-bytes",
        "1000",
        "--max-image-pixels",
        "5000",
        "--cache-subjects",
        "7",
        "--max-commit-frames",
        "99",
        "--max-inflight-messages",
        "3",
        "--max-concurrent-rpcs",
        "50",
        "--active-window",
        "5",
        "--shutdown-grace",
        "1.5",
        "--triton-url",
        "triton:8001",
        "--triton-input",
        "tensor",
        "--triton-max-batch",
        "16",
        "--triton-max-wait-ms",
        "5",
        "--triton-timeout",
        "3",
        "--triton-probe-interval",
        "0.5",
        "--triton-max-concurrent-batches",
        "2",
    )
    assert (config.host, config.port, config.metrics_port) == ("127.0.0.1", 6000, 0)
    assert config.store_url == "redis://h:6379/2?prefix=x:"
    assert (config.f_th, config.s_th, config.reseed_low_quality) == (0.6, 0.2, False)
    assert (config.embedding_dim, config.top_k, config.max_top_k) == (128, 3, 20)
    assert config.max_message_bytes == 2 * MiB and config.max_frames_per_message == 64
    assert (config.max_image_bytes, config.max_image_pixels, config.cache_subjects) == (1000, 5000, 7)
    assert (config.max_commit_frames, config.max_inflight_messages, config.max_concurrent_rpcs) == (99, 3, 50)
    assert (config.active_window_s, config.shutdown_grace_s) == (5, 1.5)
    triton = config.triton
    assert triton is not None and (triton.url, triton.input_kind, triton.max_batch) == ("triton:8001", "tensor", 16)
    assert (triton.max_wait_s, triton.timeout_s, triton.probe_interval_s) == (0.005, 3, 0.5)
    assert triton.max_concurrent_batches == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["--s-th", "2"],
        ["--store", "ftp://x"],
        ["--triton-url", "http://x/"],
        ["--store", "redis://:hunter2@h:6379/0"],  # a password on the command line is refused
        ["--memory-budget-mib", "0"],
    ],
)
def test_invalid_options_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and "error:" in capsys.readouterr().err


def test_unreachable_store_is_a_clean_failure(capsys):
    from eqface.processes import free_port

    code = main(
        ["--host", "127.0.0.1", "--port", "0", "--metrics-port", "0", "--insecure"]
        + ["--store", f"redis://127.0.0.1:{free_port()}/0"]
    )
    assert code == 1 and "cannot reach Redis" in capsys.readouterr().err


def test_hygiene_flags():
    config = _config("--retention-days", "30", "--identity-retention-days", "365", "--audit-log", "/var/log/a.jsonl")
    assert config.hygiene == HygieneConfig(RetentionConfig(30.0, 365.0), AuditConfig("/var/log/a.jsonl"))
    assert not ServiceConfig().hygiene.retention.enabled and config.hygiene.retention.enabled
    with pytest.raises(ValueError, match="subject_days must be > 0"):
        _config("--retention-days", "0")


def test_limits_flags_and_the_store_password_from_a_file_or_the_environment(tmp_path, monkeypatch):
    secret = tmp_path / "redis-password"
    secret.write_text("hunter2\n")
    config = _config(
        "--store", "redis://h:6379/0", "--store-password-file", str(secret), "--memory-budget-mib", "128",
        "--max-streams-per-tenant", "64", "--stream-idle-timeout", "30", "--tenant-frames-per-s", "500",
    )  # fmt: skip
    assert config.store_url == "redis://:hunter2@h:6379/0"
    assert config.limits == LimitsConfig(
        memory_budget_bytes=128 * MiB, max_streams_per_tenant=64, stream_idle_timeout_s=30, tenant_frames_per_s=500
    )
    monkeypatch.setenv("EQFACE_STORE_PASSWORD", "from-env")
    assert _config("--store", "redis://h:6379/0").store_url == "redis://:from-env@h:6379/0"


def test_security_options_reach_the_config(tmp_path):
    config = _config(
        *("--tls-cert", "s.pem", "--tls-key", "s-key.pem", "--tls-client-ca", "ca.pem", "--jwks", "k.json"),
        *("--jwt-public-key", "a.pem", "--jwt-public-key", "b.pem", "--jwt-issuer", "i", "--jwt-audience", "a"),
        *("--jwt-algorithms", "ES256,EdDSA", "--jwt-leeway", "5", "--reflection", "--health-port", "7000"),
    )
    assert config.security == SecurityConfig(
        tls_cert_file="s.pem",
        tls_key_file="s-key.pem",
        client_ca_file="ca.pem",
        jwks_file="k.json",
        jwt_public_key_files=("a.pem", "b.pem"),
        jwt_issuer="i",
        jwt_audience="a",
        jwt_algorithms=("ES256", "EdDSA"),
        jwt_leeway_s=5,
        reflection=True,
        health_port=7000,
    )
    assert _config("--insecure", "--insecure-any-host").security == SecurityConfig(
        insecure=True, insecure_any_host=True
    )


def test_credential_paths_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("EQFACE_TLS_CERT", "/run/tls/tls.crt")
    monkeypatch.setenv("EQFACE_TLS_KEY", "/run/tls/tls.key")
    monkeypatch.setenv("EQFACE_TLS_CLIENT_CA", "/run/tls/ca.crt")
    security = _config().security
    assert (security.tls_cert_file, security.tls_key_file) == ("/run/tls/tls.crt", "/run/tls/tls.key")
    assert security.client_ca_file == "/run/tls/ca.crt"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ([], "no credentials: pass --tls-cert and --tls-key"),  # neither credentials nor --insecure
        (["--insecure"], "binds only a loopback host"),  # default host [::]
        (["--host", "0.0.0.0", "--insecure"], "--insecure-any-host"),
        (["--tls-cert", "c", "--tls-key", "k"], "add --tls-client-ca"),  # TLS that authenticates nobody
        (["--insecure", "--tls-cert", "c", "--tls-key", "k"], "do not combine"),
        (["--jwks", "k.json", "--tls-cert", "c", "--tls-key", "k"], "--jwt-issuer, --jwt-audience"),
        (["--jwt-algorithms", "none"], "not allowed"),
        (["--jwt-algorithms", "HS256"], "not allowed"),
    ],
)
def test_serving_without_credentials_or_explicit_insecure_is_refused(argv, says, capsys):
    """Exit 2 before anything starts, with a message that says what to pass."""
    with pytest.raises(SystemExit) as exit_:
        main(["--port", "0", "--metrics-port", "0", *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and says in err, err
