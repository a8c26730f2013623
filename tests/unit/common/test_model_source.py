"""The one model source syntax: every kind parsed, every malformed source a clear error."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.common.model_source import parse_source


@pytest.mark.parametrize(
    ("text", "kind", "location", "key", "revision"),
    [
        ("hf://org/name", "hf", "org/name", "", None),
        ("hf://org/name@v1.0", "hf", "org/name", "", "v1.0"),
        ("hf://gpt2", "hf", "gpt2", "", None),
        ("org/name@" + "a" * 40, "hf", "org/name", "", "a" * 40),
        (
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "hf",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "",
            None,
        ),
        ("s3://models/llama/8b/", "s3", "models", "llama/8b", None),
        ("s3://models", "s3", "models", "", None),
        ("gs://my_bucket/m", "gs", "my_bucket", "m", None),
        ("https://h.example/m.tar.gz", "https", "https://h.example/m.tar.gz", "", None),
        (
            "http://127.0.0.1:8000/a/model.zip",
            "https",
            "http://127.0.0.1:8000/a/model.zip",
            "",
            None,
        ),
        ("/srv/models/x", "local", "/srv/models/x", "", None),
        ("file:///srv/models/x", "local", "/srv/models/x", "", None),
    ],
)
def test_sources_parse(text, kind, location, key, revision):
    source = parse_source(text)
    assert (source.kind, source.location, source.key, source.revision) == (
        kind,
        location,
        key,
        revision,
    )
    assert source.remote == (kind in ("hf", "s3", "gs", "https"))


def test_pvc_is_a_mounted_path(monkeypatch):
    monkeypatch.setenv("HFMESH_PVC_ROOT", "/mnt/volumes")
    source = parse_source("pvc://model-store/llama/8b")
    assert (source.kind, source.location, source.remote) == (
        "pvc",
        "/mnt/volumes/model-store/llama/8b",
        False,
    )


def test_a_relative_folder_that_exists_is_local_not_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    source = parse_source("org/name")
    assert (source.kind, source.location) == ("local", str(tmp_path / "org" / "name"))


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "non-empty"),
        ("ftp://host/x", "unknown scheme 'ftp'"),
        ("s3://", "no bucket"),
        ("s3://Bad_Bucket/x", "not a valid bucket name"),
        ("s3://models/a/../b", "'..'"),
        ("gs:///x", "no bucket"),
        ("hf://org/name/extra", "not a hub repository id"),
        ("hf://org/name@", "revision after '@' is empty"),
        ("hf://org/name@bad rev", "not a branch, tag or commit"),
        ("https://", "no host"),
        ("https://host.example/", "no file path"),
        ("pvc://Bad_Claim/x", "not a volume claim name"),
        ("pvc://claim/../../etc", "'..'"),
        ("file://relative/path", "absolute path"),
    ],
)
def test_malformed_sources_say_what_is_wrong(text, says):
    with pytest.raises(InvalidArgument, match="model source") as error:
        parse_source(text)
    assert says in error.value.message


def test_display_drops_credentials_and_cache_names_differ_by_revision():
    signed = parse_source("https://user:secret@h.example:8443/m.tar.gz?X-Amz-Signature=abc")
    assert signed.display == "https://h.example:8443/m.tar.gz"
    assert "secret" not in signed.cache_name() and "abc" not in signed.cache_name()
    assert signed.is_archive
    names = {parse_source(s).cache_name() for s in ("hf://o/n", "hf://o/n@v1", "hf://o/n@v2")}
    assert len(names) == 3
    assert all("/" not in name for name in names)
