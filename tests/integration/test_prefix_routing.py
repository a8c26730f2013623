"""Issue 12's routing acceptance with real processes: `python -m services.launcher --no_vllm`
serving tiny-llama twice — `prefix-llm` (3 HF replicas, the default `prefix` policy) and
`session-llm` (2 replicas, `routing: session`) — driven with `httpx` over the OpenAI routes.

Prompts are token ids (`/v1/completions` accepts them), so the exact tokens the gateway hashes
are the test's. Where a request went is read from the gateway's per-replica counters
(`hfmesh_gateway_routing_decisions_total{model, address, reason}`); the engines' own logs
(`generate <id>` per request) confirm the total. The prefix index is capped small
(`HFMESH_PREFIX_INDEX_BLOCKS`) so a long random workload hits the cap. Tests run in file order
and share the launcher.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from services.launcher.processes import free_port
from tests.helpers.launcher import LauncherRun, launched
from tests.helpers.mesh import free_port_run
from tests.helpers.metrics import scrape, wait_until

pytestmark = pytest.mark.slow  # a launcher with eight processes

PREFIX, SESSION = "prefix-llm", "session-llm"
INDEX_CAP = 256  # blocks per replica (16 tokens each)
VOCAB = 1400  # tiny-llama has 1456 ids
_DECISION = re.compile(r"hfmesh_gateway_routing_decisions_total\{(.*)\}")
_ENTRIES = re.compile(r"hfmesh_gateway_prefix_index_entries\{(.*)\}")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


class Launcher(LauncherRun):
    def __init__(self, tmp: Path) -> None:
        self.logs = tmp / "logs"
        self.port, self.control_port = free_port(), free_port()
        models = [
            {"name": PREFIX, "model": "tiny-llama", "replicas": 3},
            {"name": SESSION, "model": "tiny-llama", "replicas": 2, "routing": "session"},
        ]
        model_list = tmp / "list.yaml"
        model_list.write_text(yaml.safe_dump({"models": models}))
        args = ["--model_list", str(model_list), "--no_vllm", "--port", str(self.port)]
        args += ["--base_port", str(free_port_run(6)), "--control_plane_port"]
        args += [str(self.control_port), "--log_dir", str(self.logs), "--ready_timeout", "240"]
        super().__init__(tmp, args, env={"HFMESH_PREFIX_INDEX_BLOCKS": str(INDEX_CAP)})
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=120)

    def complete(self, model: str, prompt: list[int], max_tokens: int = 1, **extra: object) -> None:
        headers = extra.pop("headers", None)
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, **extra}
        reply = self.http.post("/openai/v1/completions", json=body, headers=headers)  # type: ignore[arg-type]
        assert reply.status_code == 200, reply.text

    def metrics(self) -> dict[str, float]:
        return scrape(f"http://127.0.0.1:{self.port}/metrics")

    def decisions(self, model: str) -> Counter[tuple[str, str]]:
        """(address, reason) → picks so far."""
        counts: Counter[tuple[str, str]] = Counter()
        for sample, value in self.metrics().items():
            if match := _DECISION.fullmatch(sample):
                labels = dict(_LABEL.findall(match[1]))
                if labels["model"] == model:
                    counts[labels["address"], labels["reason"]] += int(value)
        return counts

    def per_replica(self, model: str) -> Counter[str]:
        counts: Counter[str] = Counter()
        for (address, _), n in self.decisions(model).items():
            counts[address] += n
        return counts

    def index_entries(self, model: str) -> dict[str, float]:
        out = {}
        for sample, value in self.metrics().items():
            if match := _ENTRIES.fullmatch(sample):
                labels = dict(_LABEL.findall(match[1]))
                if labels["model"] == model:
                    out[labels["address"]] = value
        return out

    def addresses(self) -> set[str]:
        """Replica addresses the gateway routes to now (tokenizer included)."""
        return {
            dict(_LABEL.findall(sample))["address"]
            for sample in self.metrics()
            if sample.startswith("hfmesh_gateway_replica_serving{")
        }

    def engine_requests(self, model: str) -> int:
        """Generation requests every engine process of `model` logged (all lives)."""
        return sum(
            log.read_text(errors="replace").count(" generate ")
            for log in self.logs.glob(f"huggingface-{model}-*.log")
        )


def since(after: Counter[str], before: Counter[str]) -> Counter[str]:
    return Counter({k: after[k] - before[k] for k in after if after[k] - before[k] > 0})


def tokens(rng: random.Random, count: int) -> list[int]:
    return [rng.randrange(3, VOCAB) for _ in range(count)]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with launched(Launcher(tmp_path_factory.mktemp("routing")), timeout=300) as launcher:
        yield launcher


def test_a_shared_long_prefix_lands_on_one_replica_and_different_ones_spread(mesh):
    rng = random.Random(1)
    system = tokens(rng, 320)  # 20 blocks
    logged = mesh.engine_requests(PREFIX)
    before = mesh.per_replica(PREFIX)
    for _ in range(12):
        mesh.complete(PREFIX, system + tokens(rng, 12))
    shared = since(mesh.per_replica(PREFIX), before)
    assert len(shared) == 1 and sum(shared.values()) == 12, shared
    hits = sum(n for (a, r), n in mesh.decisions(PREFIX).items() if r == "affinity_hit")
    assert hits >= 11
    assert wait_until(lambda: mesh.engine_requests(PREFIX) == logged + 12, 10)

    before = mesh.per_replica(PREFIX)
    for _ in range(12):
        mesh.complete(PREFIX, tokens(rng, 320))
    spread = since(mesh.per_replica(PREFIX), before)
    assert len(spread) == 3 and max(spread.values()) <= 6, spread


def test_a_saturated_sticky_replica_spills(mesh):
    rng = random.Random(2)
    system = tokens(rng, 320)
    mesh.complete(PREFIX, system)  # home the group
    before_decisions = mesh.decisions(PREFIX)
    before = mesh.per_replica(PREFIX)

    def one(_: int) -> None:
        mesh.complete(PREFIX, system + tokens(rng, 8), max_tokens=48, ignore_eos=True)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(32)))
    went = since(mesh.per_replica(PREFIX), before)
    spills = sum(
        n - before_decisions[key] for key, n in mesh.decisions(PREFIX).items() if key[1] == "spill"
    )
    assert spills > 0 and len(went) >= 2, (went, spills)
    print(f"\n32 requests of one prefix at concurrency 16: {dict(went)}, {spills} spills")


def test_the_index_never_exceeds_its_cap_under_a_long_random_workload(mesh):
    rng = random.Random(3)
    heads = [tokens(rng, rng.randrange(64, 400)) for _ in range(40)]
    seen = 0.0
    for step in range(150):
        mesh.complete(PREFIX, rng.choice(heads) + tokens(rng, rng.randrange(1, 60)))
        if step % 10 == 9:
            entries = mesh.index_entries(PREFIX)
            assert all(n <= INDEX_CAP for n in entries.values()), entries
            seen = max(seen, *entries.values())
    assert seen == INDEX_CAP  # the workload did reach the cap


def test_a_replica_that_leaves_is_purged_and_its_prefixes_rehomed(mesh):
    rng = random.Random(4)
    before_addresses = mesh.addresses()
    # groups until one is homed on the replica `--remove_replica` stops (the last started)
    groups = [tokens(rng, 320) for _ in range(9)]
    homes = {}
    for g, head in enumerate(groups):
        before = mesh.per_replica(PREFIX)
        mesh.complete(PREFIX, head)
        (homes[g],) = since(mesh.per_replica(PREFIX), before)
    result = mesh.scale("--remove_replica", PREFIX)
    assert result.returncode == 0, result.stderr
    assert wait_until(lambda: len(mesh.addresses()) == len(before_addresses) - 1, 30)
    (gone,) = before_addresses - mesh.addresses()
    assert gone in set(homes.values()), homes  # 9 new groups spread over all three
    assert gone not in mesh.index_entries(PREFIX)
    for g, head in enumerate(groups):
        if homes[g] != gone:
            continue
        before = mesh.per_replica(PREFIX)
        for _ in range(4):
            mesh.complete(PREFIX, head + tokens(rng, 4))
        went = since(mesh.per_replica(PREFIX), before)
        assert len(went) == 1 and gone not in went, went  # re-homed, and stays there


def test_sessions_stay_on_one_replica_while_not_overloaded(mesh):
    rng = random.Random(5)
    homes = {}
    for s in range(12):
        before = mesh.per_replica(SESSION)
        for _ in range(4):
            prompt = tokens(rng, 40)  # unrelated prompts: only the session key ties them
            if s % 2:
                mesh.complete(SESSION, prompt, user=f"user-{s}")
            else:
                mesh.complete(SESSION, prompt, headers={"x-session-id": f"session-{s}"})
        went = since(mesh.per_replica(SESSION), before)
        assert len(went) == 1, (s, went)
        (homes[s],) = went
    assert len(set(homes.values())) == 2  # twelve sessions use both replicas
    reasons = {r for (_, r) in mesh.decisions(SESSION)}
    assert reasons == {"session"}
