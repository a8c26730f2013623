"""The storage initializer against real servers on loopback: an S3-protocol server (moto, with
signatures checked), a plain HTTP server, a hub cache with the hub offline; and every way a
name could leave the destination folder, refused."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from services.launcher.processes import ROOT, free_port
from services.models.fetch import RETRIES, SOURCE_MARKER, fetch_source
from services.models.files import FetchError, serving_files, unpack
from tests.helpers.hubcache import add_snapshot
from tests.helpers.stores import CuttingProxy, http_server, s3_server

BUCKET = "models"
MODEL_FILES = {
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
}


def _files(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file() and p.name != SOURCE_MARKER and not p.name.startswith(".hfmesh_build")
    }


@pytest.fixture(scope="module")
def tiny(model_path) -> Path:
    return Path(model_path("tiny-llama"))


@pytest.fixture(scope="module")
def s3(tiny):
    with s3_server() as server:
        client = server.client()
        client.create_bucket(Bucket=BUCKET)
        server.upload_folder(BUCKET, "tiny-llama", tiny)
        # What a training run leaves beside the weights: never fetched.
        for extra in ("optimizer.pt", "pytorch_model.bin", "checkpoint-10/model.safetensors"):
            client.put_object(Bucket=BUCKET, Key=f"tiny-llama/{extra}", Body=b"not served")
        yield server


@pytest.fixture
def s3_env(s3, monkeypatch):
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    return s3


def _leftovers(cache: Path) -> list[Path]:
    """What a fetch left in the cache's sources/ (its lock files aside)."""
    sources = cache / "sources"
    return [p for p in sources.glob("*") if p.name != ".locks"] if sources.exists() else []


# --- s3:// ---------------------------------------------------------------------------------


def test_s3_fetches_serving_files_once(s3_env, tiny, tmp_path, monkeypatch):
    folder = fetch_source("s3://models/tiny-llama", cache_dir=tmp_path)
    assert folder.parent == tmp_path / "sources"
    assert set(_files(folder)) == MODEL_FILES  # no optimizer, no .bin beside safetensors
    assert _files(folder) == {k: v for k, v in _files(tiny).items() if k in MODEL_FILES}
    assert [p.name for p in _leftovers(tmp_path)] == [folder.name]
    # A second fetch touches no store: an unreachable endpoint changes nothing.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    assert fetch_source("s3://models/tiny-llama/", cache_dir=tmp_path) == folder


def test_a_destination_the_fetcher_did_not_write_is_not_replaced(s3_env, tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(FetchError, match="was not written by a fetch"):
        fetch_source("s3://models/tiny-llama", tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep"
    folder = fetch_source("s3://models/tiny-llama", tmp_path / "new")
    assert set(_files(folder)) == MODEL_FILES
    # A folder a fetch wrote takes another source: replaced whole.
    assert fetch_source("s3://models/tiny-llama/config.json", folder) == folder
    assert set(_files(folder)) == {"config.json"}


def test_s3_wrong_key_is_clear_and_leaves_nothing(s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(FetchError, match="access denied .*AWS_SECRET_ACCESS_KEY") as error:
        fetch_source("s3://models/tiny-llama", cache_dir=tmp_path)
    assert "not-the-secret" not in str(error.value)
    assert _leftovers(tmp_path) == []


def test_s3_missing_bucket_is_clear_and_leaves_nothing(s3_env, tmp_path):
    with pytest.raises(FetchError, match="bucket 'no-such-bucket' does not exist"):
        fetch_source("s3://no-such-bucket/tiny-llama", cache_dir=tmp_path)
    with pytest.raises(FetchError, match="nothing under this prefix"):
        fetch_source("s3://models/no-such-prefix/deeper", cache_dir=tmp_path)
    assert _leftovers(tmp_path) == []


def test_s3_interrupted_download_resumes(s3_env, tmp_path, monkeypatch):
    weights = os.urandom(6 << 20)
    client = s3_env.client()
    client.put_object(Bucket=BUCKET, Key="big/model.safetensors", Body=weights)
    client.put_object(Bucket=BUCKET, Key="big/config.json", Body=b'{"model_type": "llama"}')
    port = s3_env.endpoint.rsplit(":", 1)[1]
    # Connections dropped after 1 MiB, as often as one run tries (each try resumes the last):
    # the run fails and keeps what it has; the next run resumes from there.
    proxy = CuttingProxy(("127.0.0.1", int(port)), limit=1 << 20, cuts=RETRIES)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
    try:
        with pytest.raises(FetchError, match="run the same fetch again to resume"):
            fetch_source("s3://models/big", cache_dir=tmp_path)
        partial = [p for p in _leftovers(tmp_path) if p.name.endswith(".partial")]
        assert len(partial) == 1, _leftovers(tmp_path)
        part = partial[0] / "files" / "model.safetensors.part"
        kept = part.stat().st_size
        assert (RETRIES - 1) << 20 < kept < len(weights)  # each try resumed the one before
        folder = fetch_source("s3://models/big", cache_dir=tmp_path)
    finally:
        proxy.close()
    assert (folder / "model.safetensors").read_bytes() == weights
    ranges = [r for r in proxy.ranged_gets() if b"model.safetensors" in r]
    assert any(f"bytes={kept}-".encode() in r for r in ranges), ranges
    assert proxy.cut == RETRIES
    assert _leftovers(tmp_path) == [folder]


def test_s3_single_object_archive_is_unpacked(s3_env, tiny, tmp_path):
    s3_env.client().put_object(
        Bucket=BUCKET, Key="archives/tiny-llama.tar.gz", Body=_tar_gz(tiny, "tiny-llama")
    )
    folder = fetch_source("s3://models/archives/tiny-llama.tar.gz", cache_dir=tmp_path)
    assert _files(folder) == {k: v for k, v in _files(tiny).items() if k in MODEL_FILES}
    assert _leftovers(tmp_path) == [folder]


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("evil/../../escape.json", "leaves the destination"),
        ("evil2//tmp/escape.json", "absolute path"),
    ],
)
def test_s3_object_keys_out_of_the_destination_are_refused(s3_env, tmp_path, key, says):
    prefix = key.split("/")[0]
    s3_env.client().put_object(Bucket=BUCKET, Key=f"{prefix}/config.json", Body=b"{}")
    s3_env.client().put_object(Bucket=BUCKET, Key=key, Body=b"{}")
    with pytest.raises(FetchError, match=says):
        fetch_source(f"s3://models/{prefix}", cache_dir=tmp_path)
    assert _leftovers(tmp_path) == []
    assert not (tmp_path / "escape.json").exists()


# --- https:// ------------------------------------------------------------------------------


def _tar_gz(folder: Path, top: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(folder, arcname=top, filter=lambda m: None if "/." in m.name else m)
    return buffer.getvalue()


def test_https_archive_is_fetched_and_unpacked(tiny, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "tiny-llama.tar.gz").write_bytes(_tar_gz(tiny, "tiny-llama"))
    with zipfile.ZipFile(served / "tiny-llama.zip", "w") as archive:
        for name in MODEL_FILES:
            archive.write(tiny / name, name)
    (served / "config.json").write_bytes((tiny / "config.json").read_bytes())
    with http_server(served) as base:
        for name in ("tiny-llama.tar.gz", "tiny-llama.zip"):
            folder = fetch_source(f"{base}/{name}", cache_dir=tmp_path / "cache")
            assert set(_files(folder)) == MODEL_FILES
            assert _files(folder) == {k: v for k, v in _files(tiny).items() if k in MODEL_FILES}
        single = fetch_source(f"{base}/config.json", cache_dir=tmp_path / "cache")
        assert _files(single) == {"config.json": _files(tiny)["config.json"]}
    assert not list((tmp_path / "cache" / "sources").glob(".*partial"))


def test_https_checksum_in_the_url_is_verified(tiny, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "config.json").write_bytes((tiny / "config.json").read_bytes())
    right = hashlib.sha256((tiny / "config.json").read_bytes()).hexdigest()
    with http_server(served) as base:
        assert fetch_source(f"{base}/config.json#sha256={right}", cache_dir=tmp_path / "a")
        with pytest.raises(FetchError, match="failed its sha256 check"):
            fetch_source(f"{base}/config.json#sha256={'0' * 64}", cache_dir=tmp_path / "b")
    assert _leftovers(tmp_path / "b") == []


def test_corrupt_archive_is_a_clear_error(tiny, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    whole = _tar_gz(tiny, "tiny-llama")
    (served / "broken.tar.gz").write_bytes(whole[: len(whole) // 2])
    (served / "broken.zip").write_bytes(b"PK\x03\x04 this is not a zip file at all")
    with http_server(served) as base:
        for name in ("broken.tar.gz", "broken.zip"):
            with pytest.raises(FetchError, match=f"{name}.* is not a valid"):
                fetch_source(f"{base}/{name}", cache_dir=tmp_path / "cache")
        with pytest.raises(FetchError, match="not found"):
            fetch_source(f"{base}/missing.tar.gz", cache_dir=tmp_path / "cache")
    assert _leftovers(tmp_path / "cache") == []


# --- archives: nothing leaves the destination ------------------------------------------------


def _tar_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"x") -> Path:
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        ok = tarfile.TarInfo("model/config.json")
        ok.size = 2
        archive.addfile(ok, io.BytesIO(b"{}"))
        if member.isfile():
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
        else:
            archive.addfile(member)
    return path


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    ("member", "says"),
    [
        (tarfile.TarInfo("../escape.json"), "leaves the destination"),
        (tarfile.TarInfo("model/../../escape.json"), "leaves the destination"),
        (tarfile.TarInfo("/tmp/escape.json"), "absolute path"),
        (_link("model/link", "../../escape.json", tarfile.SYMTYPE), "points out of"),
        (_link("model/abs", "/etc/passwd", tarfile.SYMTYPE), "points out of"),
        (_link("model/hard", "/etc/passwd", tarfile.LNKTYPE), "points out of"),
        (_link("model/hard2", "../escape.json", tarfile.LNKTYPE), "points out of"),
    ],
)
def test_tar_members_out_of_the_destination_are_refused(tmp_path, member, says):
    out = tmp_path / "out" / "unpacked"
    with pytest.raises(FetchError, match=says):
        unpack(_tar_with(tmp_path, member), out, "evil.tar.gz")
    assert not out.exists()
    assert not (tmp_path / "escape.json").exists()
    assert not (tmp_path / "out" / "escape.json").exists()


def test_a_link_inside_the_archive_is_kept(tmp_path):
    out = tmp_path / "unpacked"
    unpack(_tar_with(tmp_path, _link("model/alias.json", "config.json", tarfile.SYMTYPE)), out, "a")
    assert (out / "model" / "alias.json").read_text() == "{}"


@pytest.mark.parametrize(
    ("name", "says"), [("../escape.json", "leaves the destination"), ("/abs.json", "absolute")]
)
def test_zip_members_out_of_the_destination_are_refused(tmp_path, name, says):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{}")
        archive.writestr(zipfile.ZipInfo(name), "x")  # ZipInfo keeps the name as written
    with pytest.raises(FetchError, match=says):
        unpack(path, tmp_path / "unpacked", "evil.zip")
    assert not (tmp_path / "unpacked").exists()
    assert not (tmp_path / "escape.json").exists()


def test_an_archive_served_over_https_with_a_bad_member_is_refused(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    _tar_with(served, tarfile.TarInfo("../escape.json"))
    with http_server(served) as base:
        with pytest.raises(FetchError, match="leaves the destination"):
            fetch_source(f"{base}/evil.tar.gz", cache_dir=tmp_path / "cache")
    assert _leftovers(tmp_path / "cache") == []
    assert not (tmp_path / "cache" / "escape.json").exists()


# --- serving files -------------------------------------------------------------------------


def test_serving_files_prefer_safetensors_and_skip_training_state():
    names = [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
        "tf_model.h5",
        "flax_model.msgpack",
        "onnx/model.onnx",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state_0.pth",
        "training_args.bin",
        "trainer_state.json",
        "checkpoint-500/model.safetensors",
        ".gitattributes",
        "tokenizer.json",
        "1_Pooling/config.json",
    ]
    assert serving_files(names) == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "1_Pooling/config.json",
    ]
    assert serving_files(["config.json", "pytorch_model.bin"]) == [
        "config.json",
        "pytorch_model.bin",
    ]


# --- hf:// ---------------------------------------------------------------------------------


def _fetch_cli(source: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.models", "fetch", source],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _no_hub(mode: str) -> dict[str, str]:
    """The hub out of reach: offline mode, or an endpoint where nothing listens."""
    if mode == "offline":
        return {"HF_HUB_OFFLINE": "1"}
    return {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}


@pytest.mark.parametrize("mode", ["offline", "unreachable"])
def test_hub_sources_resolve_from_the_hub_cache_with_revisions(tiny, tmp_path, mode):
    hub = tmp_path / "hub"
    main_commit, tagged_commit = "a" * 40, "b" * 40
    add_snapshot(hub, "org/tiny", main_commit, tiny, refs=("main",))
    other = tmp_path / "v1"
    other.mkdir()
    for name in MODEL_FILES:
        (other / name).write_bytes((tiny / name).read_bytes())
    (other / "generation_config.json").write_text('{"revision": "v1"}')
    (other / "optimizer.pt").write_bytes(b"training state")
    add_snapshot(hub, "org/tiny", tagged_commit, other, refs=("v1",))
    env = {"HF_HUB_CACHE": str(hub), "HFMESH_CACHE_DIR": str(tmp_path), **_no_hub(mode)}
    fetched = {}
    for source in ("hf://org/tiny", "hf://org/tiny@v1", f"org/tiny@{tagged_commit}"):
        done = _fetch_cli(source, env)
        assert done.returncode == 0, done.stderr
        fetched[source] = Path(done.stdout.strip())
    assert set(_files(fetched["hf://org/tiny"])) == MODEL_FILES
    generation = {s: (f / "generation_config.json").read_text() for s, f in fetched.items()}
    assert generation["hf://org/tiny"] == (tiny / "generation_config.json").read_text()
    assert generation["hf://org/tiny@v1"] == '{"revision": "v1"}'
    assert generation[f"org/tiny@{tagged_commit}"] == '{"revision": "v1"}'
    assert not (fetched["hf://org/tiny@v1"] / "optimizer.pt").exists()
    assert (fetched["hf://org/tiny@v1"] / SOURCE_MARKER).read_text().count(tagged_commit) == 1


@pytest.mark.parametrize("mode", ["offline", "unreachable"])
def test_hub_source_not_in_the_cache_says_the_hub_is_unreachable(tmp_path, mode):
    env = {
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HFMESH_CACHE_DIR": str(tmp_path),
        **_no_hub(mode),
    }
    done = _fetch_cli("hf://org/absent@v2", env)
    assert done.returncode == 1
    assert "hub is unreachable" in done.stderr
    assert "hf download org/absent --revision v2" in done.stderr
    assert _leftovers(tmp_path) == []
