"""Settings: defaults, TOML, environment overrides, and one-line errors for every bad value."""

from __future__ import annotations

import pytest

from filestore.config import SECTIONS, load_settings
from filestore.errors import ConfigError
from filestore.values import parse_duration, parse_size


def test_embedded_default_needs_no_file():
    settings = load_settings(environ={})
    assert settings.storage.data_dir == "./filestore-data"
    assert settings.server.port == 8080
    assert settings.auth.public_read is True
    assert settings.storage.max_upload_size == 5 * 1024**3


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0), ("100", 100), ("1KiB", 1024), ("1.5GiB", 1536 * 1024**2), ("10MB", 10**7),
     ("2 tib", 2 * 1024**4), (42, 42)],
)
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "ten", "5XB", "-1", "1.2.3GiB", True, -5, "9" * 400,
                                  "9" * 400 + "GiB", 2**70, "\u0661\u0660MiB"])
def test_bad_sizes(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0s", 0), ("10m", 600), ("1h30m", 5400), ("500ms", 0.5), ("2d", 172800), ("15", 15),
     (3, 3.0)],
)
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "soon", "10x", "m10", "1h 30m", "-5s", False, "9" * 400,
                                  10**400, "1e5", "\u0661\u0660m", float("nan")])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_toml_file_and_env_override(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[server]\nport = 9000\n[storage]\nmax_upload_size = "1MiB"\n')
    settings = load_settings(config, environ={"FILESTORE_SERVER__PORT": "9100"})
    assert settings.server.port == 9100  # the environment wins over the file
    assert settings.storage.max_upload_size == 1024**2


def test_config_path_from_environment(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[auth]\npublic_read = false\n')
    assert load_settings(environ={"FILESTORE_CONFIG": str(config)}).auth.public_read is False


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ('[storage]\nmax_upload_size = "5XB"\n', {},
         "storage.max_upload_size = '5XB': expected a size"),
        ('[server]\nport = 70000\n', {}, "server.port = 70000: expected a whole number from 0"),
        ('[server]\nprot = 1\n', {}, "unknown key server.prot"),
        ('[nope]\nx = 1\n', {}, "unknown section [nope]"),
        ('server = 1\n', {}, "server must be a [server] table"),
        ('[auth]\npublic_read = "maybe"\n', {}, "auth.public_read = 'maybe': expected true or"),
        ('[server\n', {}, "invalid TOML"),
        ("", {"FILESTORE_SERVER__WORKERS": "lots"}, "FILESTORE_SERVER__WORKERS: server.workers"),
        ("", {"FILESTORE_BOGUS__KEY": "1"}, "FILESTORE_BOGUS__KEY: unknown section"),
        ("", {"FILESTORE_AUTH__TOKN": "x"}, "unknown key auth.tokn"),
        ('[remote]\npart_size = "1MiB"\n', {}, "remote.part_size = '1MiB': expected a size of at "
         "least 5MiB"),
        ('[upload]\ndelete_delay = "sometimes"\n', {}, "upload.delete_delay"),
    ],
)
def test_bad_values_name_key_value_and_expectation(tmp_path, toml, env, message):
    config = tmp_path / "c.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_settings(config, environ=env)
    assert message in info.value.detail
    assert "\n" not in info.value.detail


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_token_never_in_repr():
    settings = load_settings(environ={"FILESTORE_AUTH__TOKEN": "s3cr3t-token"})
    assert settings.auth.token == "s3cr3t-token"
    assert "s3cr3t-token" not in repr(settings)


def test_example_config_documents_every_key_with_its_default():
    import tomllib
    from pathlib import Path

    example = Path(__file__).parent.parent / "config.example.toml"
    with open(example, "rb") as fh:
        raw = tomllib.load(fh)
    defaults = load_settings(environ={})
    assert load_settings(example, environ={}) == defaults
    for section in SECTIONS:
        assert set(raw[section]) == set(vars(getattr(defaults, section))), section
